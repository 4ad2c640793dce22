# tinyfw boot model: which model an MLPerf Tiny / EEMBC runner's commands use when none is loaded
# (`tinyhost flash --boot-model` writes BOOT_MODEL_FILE). Imported by tinyfw.cmd_text before tinyfw.eembc, by
# tinyfw.eembc when it needs a model, and by INFO (tinyfw.cmd_session) for one line; small, and it imports nothing
# of tinyfw, so no text-command module imports another.

BOOT_MODEL_FILE = "/boot_model"                         # the path of the model to load
DEFAULT_MODELS = ("/model.tflite", "/models/model.tflite")  # else the first of these that exists


def path():
    """The path of the boot model: the one BOOT_MODEL_FILE names, else the first of DEFAULT_MODELS that exists;
    "" when there is none (INFO reports it as `boot_model`)."""
    import os

    try:
        with open(BOOT_MODEL_FILE) as f:
            return f.read().strip()
    except OSError:
        pass
    for p in DEFAULT_MODELS:
        try:
            os.stat(p)
        except OSError:
            continue
        return p
    return ""


def load(rt):
    """Load the boot model into ``rt`` (anything with ``load_model(path)``); the Model, or None when there is none."""
    p = path()
    return rt.load_model(p) if p else None
