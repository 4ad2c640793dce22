# tinyfw: the device firmware package. Kept empty so importing one module does not pull in the others.
