# tinyhost's main.py: start the tinyfw runtime at boot, so a host -- tinyhost, or an MLPerf Tiny / EEMBC runner
# sending `name%` -- can talk to the board right away. The REPL stays reachable: Ctrl-C at a console (as mpremote
# sends it) ends the runtime, and a reset from the raw REPL (mpremote, tinyhost) does not run main.py at all.
try:
    import tinyfw.runtime
except ImportError as e:
    print("tinyfw is not installed (%s); run `tinyhost flash`" % e)
else:
    tinyfw.runtime.run(autostart=True)
