# tinyfw text commands: an EEMBC runner's `name%` lines on the same stream as frames (docs/bench.md).
# The runtime collects a command's bytes (Runtime._on_text) and imports this module at the first '%', so a board
# that never sees a text command does not carry this code; tinyfw.eembc executes the commands.
# The model an EEMBC runner drives (tinyfw.boot_model) is loaded here, BEFORE tinyfw.eembc is imported: a model that needs nearly the
# whole heap to load (vww01 on the esp32 profile) fits only while eembc's ~10 KB of code are not yet resident.

_eembc = None                  # tinyfw.eembc once imported; False when it is not installed


def run(rt, n, overflow):
    """Execute the text command in rt.text[:n] (its '%' just came); False when tinyfw.eembc is not installed."""
    global _eembc
    if overflow:
        rt.last_error = "text command longer than %d bytes ignored" % len(rt.text)
        rt.write_text("e-[%s]\r\n" % rt.last_error)
        return True
    try:
        text = bytes(rt.text[:n]).decode().strip() if n else ""
    except UnicodeError:
        rt.write_text("e-[text command is not UTF-8]\r\n")
        return True
    if _eembc is None:
        if rt.model is None:
            try:
                from tinyfw import boot_model
                boot_model.load(rt)
            except Exception as e:    # eembc tries again, and says why, at the next command needing a model
                rt.last_error = "loading the default model: %r" % (e,)
        # the binary protocol's model commands (tinyfw.cmd_model, ~7.6 KB) make room for eembc; the next binary
        # command imports them again
        rt.drop_commands()
        try:
            from tinyfw import eembc
            _eembc = eembc
        except ImportError:
            _eembc = False
        except MemoryError:             # no room for its code now (a big model loaded): say so, try next time
            import gc
            gc.collect()
            rt.write_text("e-[out of memory importing tinyfw.eembc (%d bytes free); unload the model]\r\n"
                          % gc.mem_free())
            rt.write_text("m-ready\r\n")
            return True
    if not _eembc:
        return False
    try:
        _eembc.handle_command(text, rt)
    except Exception as e:  # a text command never ends the runtime
        rt.last_error = "text command %r: %r" % (text[:32], e)
        rt.write_text("e-[%r]\r\n" % (e,))
    return True
