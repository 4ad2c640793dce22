"""``tinyhost listen``: keyword detections from continuous audio on a board, live (docs/streaming.md).

Parses options, calls tinyhost.stream, formats its dataclasses.
"""

import json

import click

from .. import boards, console
from .. import stream as st
from ..errors import UsageError
from .common import board_options, json_option, write_json


def format_detection(d, clock_label):
    return (f"{d.audio_s:8.2f} s  {console.printable(d.label):<8} {d.score:5.2f}   "
            f"(board {d.board_s:.2f} s, {clock_label})")


def format_summary(r):
    c = r.counters
    lines = [f"{len(r.detections)} detections in {r.audio_s:.1f} s of audio on the {r.board}"
             f"{' (virtual board)' if r.virtual else ''}; times: {r.clock_label}",
             f"hops {c.get('hops', 0)}, inferences {c.get('inferences', 0)} (every {c.get('infer_every')} hops, "
             f"posteriors averaged over {c.get('smooth')}), skipped {c.get('inferences_skipped', 0)}, "
             f"hops dropped {c.get('hops_dropped', 0)}, duty cycle {r.duty_cycle:.1%}, most behind "
             f"{c.get('lag_max_us', 0) / 1000:.1f} ms"]
    if r.keeps_up:
        lines.append("real time: the board keeps up with the audio")
    else:
        lines.append("real time: the board does NOT keep up: it skipped inferences or dropped hops (counted above)")
    if not r.line_keeps_up:
        lines.append(f"line: {r.baud} baud carries the audio at {r.baud / st.line_bits_per_s(r.frame_bytes):.2f}x "
                     f"real time (needs {st.line_bits_per_s(r.frame_bytes):.0f} baud): audio arrives slower than "
                     "it was recorded, so board times stretch; audio times stay right")
    return "\n".join(lines)


@click.command()
@board_options
@click.option("--model", required=True, help="Keyword-spotting model: a .tflite file or a name (kws).")
@click.option("--wav", "wav_path", type=click.Path(dir_okay=False), default=None,
              help="Audio to stream over the serial link (resampled to 16 kHz mono); with --mic on a virtual board, "
                   "what its stand-in microphone plays.")
@click.option("--mic", is_flag=True, help="The board's own microphone (machine.I2S, pins from the board profile's "
                                          "[mic]; see docs/streaming.md).")
@click.option("--seconds", type=float, default=10.0, show_default=True, help="With --mic: how long to listen.")
@click.option("--threshold", type=float, default=st.StreamOptions.threshold, show_default=True,
              help="Smoothed posterior (0-1) a detection needs.")
@click.option("--infer-every", type=int, default=0, show_default=True,
              help="Hops (20 ms) between inferences; 0: the fewest with which the board keeps up.")
@click.option("--smooth", type=int, default=0, show_default=True,
              help="Inferences whose posteriors are averaged; 0: those of the last ~250 ms.")
@click.option("--refractory-ms", type=int, default=st.StreamOptions.refractory_ms, show_default=True,
              help="No second detection sooner than this after one.")
@json_option("Write the detections, the board's counters and the provenance as JSON.")
def listen(board_name, port, baud, state_dir, model, wav_path, mic, seconds, threshold, infer_every, smooth,
           refractory_ms, json_path):
    """Stream audio to a keyword-spotting model on the board; show detections as the board makes them."""
    from .. import board as board_mod
    from ..zoo import resolve

    if not wav_path and not mic:
        raise UsageError("give --wav FILE or --mic", hint="tinyhost listen --board sim --model kws --wav a.wav")
    options = st.StreamOptions(infer_every=infer_every, smooth=smooth, threshold=threshold,
                               refractory_ms=refractory_ms).check()
    model_path = resolve(model)
    out = console.console()
    profile, virtual = boards.from_spec(board_name)
    if baud is None and port is None and virtual and not mic and st.virtual_board_baud() > profile.baud:
        # a virtual board's line runs at the rate it is started at: one that carries the audio (a real board's
        # rate is the user's: --baud)
        baud = st.virtual_board_baud()
        click.echo(f"virtual board started at {baud} baud, a rate that carries 16 kHz audio in real time "
                   f"(the {profile.name} profile's {profile.baud} does not); --baud sets another", err=True)
    with board_mod.connect(board_name, port, baud, state_dir=state_dir) as b:
        label = {}

        def show(d):
            out.print(format_detection(d, label.get("clock", "board clock")))

        if mic:
            from .. import mic as mic_mod
            label["clock"] = "board time" if b.virtual else "board clock"
            result = mic_mod.listen(b, model_path, seconds, options, on_detection=show, wav_path=wav_path)
        else:
            label["clock"] = "board time" if b.virtual else "board clock"
            result = st.listen(b, model_path, wav_path, options, on_detection=show)
        provenance = b.provenance
    click.echo(format_summary(result))
    if json_path:
        doc = {"stream": result.to_dict(), "provenance": provenance.__dict__}
        if write_json(json_path, json.dumps(doc, indent=2, default=str)):
            click.echo(f"wrote {json_path}")
