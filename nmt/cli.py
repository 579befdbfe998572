"""Command line: `nmt data | train | translate | score | evaluate | average | plot | serve`. Thin front ends
over the library.

Each command imports what it needs when it runs, so `nmt translate` never loads the training-side libraries.
User errors (`NMTError`) end with one line on stderr and exit status 1, as does a missing dependency; Ctrl-C
with exit status 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
from pathlib import Path

from nmt.config import BEAM_BATCH, GREEDY_BATCH, DecodeConfig
from nmt.errors import NMTError

log = logging.getLogger("nmt")


def _number(name: str, low: float, inclusive: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}")
        if value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(
                f"{name} must be {'at least' if inclusive else 'more than'} {low:g}, got {text}"
            )
        return value

    return parse


def _positive(name: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be at least 1, got {value}")
        return value

    return parse


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"--port must be a port number, 1 to 65535, got {text!r}")
    return value


def _translator(args):
    """The model(s) of `-m`, loaded as the decoding flags say; the flags left out keep the (first) model
    file's decoding settings."""
    from nmt.translate import Translator

    translator = Translator.load(args.model, args.device, args.precision, args.threads)
    if args.command != "serve" or args.tgt_lang is not None:
        translator.searchable(args.tgt_lang)  # a missing or unknown language fails before any input is read
    translator.progress = True  # shown when stderr is a terminal
    translator.defaults = translator.options(
        beam=args.beam,
        length_penalty=args.length_penalty,
        max_len_ratio=args.max_len_ratio,
        max_len_offset=args.max_len_offset,
        batch_size=args.batch_size,
    )
    return translator


def cmd_data(args) -> None:
    from nmt import multi30k

    paths = multi30k.fetch(args.dest, args.mirror)
    print(f"{len(paths)} Multi30k files in {args.dest}, sha256 checked")


def cmd_train(args) -> None:
    from nmt.config import load_config
    from nmt.train import train

    cfg = load_config(args.config, args.overrides)
    if args.init_from is not None:  # the flag overrides train.init_from (a path, never read as YAML)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=args.init_from))
    best = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line, not one per process
        print(f"best model: {best}")


def _output_folder(path: str) -> Path:
    """A folder to write into, made if missing; NMTError when it cannot be."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NMTError(f"{path}: exists and is not a folder") from None
    except OSError as e:
        raise NMTError(f"{path}: cannot make this folder ({e.strerror})") from None
    return folder


def _check_parent(path: str | None) -> None:
    """Fail before the work, not after it, when an output file's folder is missing."""
    if path not in (None, "-") and not Path(path).resolve().parent.is_dir():
        raise NMTError(f"{path}: its folder does not exist")


def cmd_translate(args) -> None:
    from nmt.textio import buffers, line_writer, read_lines

    for path in (args.output, args.alignments):
        _check_parent(path)
    heatmaps = _output_folder(args.attention) if args.attention else None
    translator = _translator(args)
    if heatmaps is not None or args.alignments is not None:
        return _translate_with_attention(translator, list(read_lines(args.input)), args, heatmaps)
    # Streamed: each buffer of lines is translated and written (flushed) before the next is read to the end.
    with line_writer(args.output) as write:
        done = 0
        for lines in buffers(read_lines(args.input), args.buffer_lines):
            if args.n_best is None:
                write(translator.translate(lines, first_line=done + 1, tgt_lang=args.tgt_lang))
            else:
                best = translator.translate(lines, args.n_best, done + 1, args.tgt_lang)
                write(n_best_lines(best, args.format, done))
            done += len(lines)


def _translate_with_attention(translator, lines: list[str], args, heatmaps: Path | None) -> None:
    """The whole input at once: translations, hard alignments and heatmaps (numbered by the line count)."""
    from nmt.alignment import hard_alignment, heatmap_names, save_heatmap
    from nmt.textio import write_lines

    results = translator.translations(lines, attention=True, tgt_lang=args.tgt_lang)
    write_lines(args.output, [r.text for r in results])
    if args.alignments:
        alignments = [
            hard_alignment(r.attention, r.source, r.pieces) if r.attention is not None else ""
            for r in results
        ]
        write_lines(args.alignments, alignments)
    if heatmaps is not None:
        for name, r in zip(heatmap_names(len(lines)), results):
            save_heatmap(heatmaps / name, r.attention, r.source, r.pieces)
        log.info("%d attention heatmaps in %s", len(lines), heatmaps)


def n_best_lines(hypotheses: list[list[tuple[str, float]]], form: str, first: int = 0) -> list[str]:
    """Moses n-best lines (`line ||| hypothesis ||| score`, line numbers from 0; these lines' from `first`),
    or one JSON object per input line (`{"line": i, "hypotheses": [{"text", "score"}, ...]}`)."""
    if form == "jsonl":
        return [
            json.dumps(
                {"line": i, "hypotheses": [{"text": t, "score": round(x, 4)} for t, x in hyps]},
                ensure_ascii=False,
            )
            for i, hyps in enumerate(hypotheses, first)
        ]
    return [
        f"{i} ||| {text} ||| {score:.4f}" for i, hyps in enumerate(hypotheses, first) for text, score in hyps
    ]


def cmd_score(args) -> None:
    from nmt.textio import read_lines, write_lines

    src, tgt = list(read_lines(args.src)), list(read_lines(args.tgt))
    if len(src) != len(tgt):
        raise NMTError(f"{args.src} has {len(src)} lines but {args.tgt} has {len(tgt)}: they must match")
    scores = _translator(args).score(src, tgt, tgt_lang=args.tgt_lang)
    lines = ["" if s is None else f"{s.mean:.4f}\t{s.log_prob:.4f}\t{s.tokens}" for s in scores]
    write_lines(args.output, lines)


def cmd_evaluate(args) -> None:
    from nmt.metrics import corpus_scores, language_of
    from nmt.textio import read_lines, write_lines, write_text

    src, ref = list(read_lines(args.src)), list(read_lines(args.ref))
    if len(src) != len(ref):
        raise NMTError(f"{args.src} has {len(src)} lines but {args.ref} has {len(ref)}: they must match")
    translator = _translator(args)
    hyps = translator.translate(src, tgt_lang=args.tgt_lang)
    if args.output:
        write_lines(args.output, hyps)
    scores = corpus_scores(hyps, ref, args.lang or args.tgt_lang or language_of(args.ref))
    print(f"{scores['bleu_detail']}  {scores['bleu_signature']}")
    print(f"chrF2 = {scores['chrf']:.2f}  {scores['chrf_signature']}")
    if "bleu_published" in scores:
        published = f"BLEU (published style) = {scores['bleu_published']:.2f}"
        print(f"{published}  {scores['bleu_published_signature']}  (not comparable with the BLEU above)")
    if args.json:
        record = {
            "model": [str(m) for m in args.model],
            "src": args.src,
            "ref": args.ref,
            "beam": translator.defaults.beam,
            **scores,
        }
        write_text(args.json, json.dumps(record, indent=2) + "\n")


def cmd_plot(args) -> None:
    from nmt.plot import plot_runs

    output = args.output or (Path(args.runs[0]) / "curves.png" if len(args.runs) == 1 else Path("curves.png"))
    print(f"curves of {len(args.runs)} run(s): {plot_runs(args.runs, output)}")


def cmd_serve(args) -> None:
    import uvicorn

    from nmt import __version__
    from nmt.serve import check_address, create_app

    check_address(args.host, args.port)
    translator = _translator(args)
    info = {
        "version": __version__,
        "model": [str(m) for m in args.model],
        "device": str(translator.device),
        "precision": args.precision,
        "beam": translator.defaults.beam,
        "languages": translator.languages,  # a multilingual model's target languages; [] bilingual
        "tgt_lang": args.tgt_lang,  # the default of requests that name none
        "max_lines": args.max_lines,
        "max_bytes": args.max_bytes,
    }
    app = create_app(translator, info, args.max_bytes, args.max_lines, args.tgt_lang)
    log.info("serving %s on http://%s:%d (Ctrl-C stops)", ", ".join(info["model"]), args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info")


def cmd_average(args) -> None:
    from nmt.ensemble import average_models

    average_models(args.models, args.output)
    print(f"average of {len(args.models)} models: {args.output}")


def _add_decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-m",
        "--model",
        required=True,
        nargs="+",
        metavar="MODEL",
        help="model file (best.safetensors of a run); several make an ensemble",
    )
    p.add_argument(
        "--tgt-lang",
        default=None,
        metavar="LANG",
        help="the language to translate into, for a multilingual model (required there; one of its target "
        "languages). Any source language it was trained on may go into it: a direction it never trained "
        "on (say de to fr for a model of en-de, de-en, en-fr, fr-en) is zero-shot, allowed and usually worse",
    )
    # Decoding options default to None: what is left out keeps the model file's settings (the decode section
    # of the config it was trained with: DecodeConfig's defaults, shown here, unless that config set them).
    d = DecodeConfig()
    p.epilog = "*: or the model file's own, the decode section of the config it was trained with"
    p.add_argument("--beam", type=_positive("--beam"), help=f"beam size; 1 is greedy (default {d.beam}*)")
    p.add_argument(
        "--batch-size",
        type=_positive("--batch-size"),
        help=f"sentences per batch (default {BEAM_BATCH} with beam search, {GREEDY_BATCH} greedy)",
    )
    p.add_argument(
        "--length-penalty",
        type=_number("--length-penalty", 0, True),
        help=f"GNMT length penalty alpha (default {d.length_penalty}*)",
    )
    p.add_argument(
        "--max-len-ratio",
        type=_number("--max-len-ratio", 0, False),
        help=f"output pieces at most ratio * source + offset (default {d.max_len_ratio}*)",
    )
    p.add_argument(
        "--max-len-offset", type=_positive("--max-len-offset"), help=f"(default {d.max_len_offset}*)"
    )
    p.add_argument("--threads", type=_positive("--threads"), default=None, help="CPU threads for torch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "int8"],
        help="of the decoder's matrix multiplies: bf16 pays where the CPU has AMX or AVX512-BF16; "
        "int8 is dynamic quantization, CPU only (default fp32)",
    )
    p.add_argument(
        "--quantize",
        dest="precision",
        choices=["int8"],
        help="--quantize int8 is --precision int8 (dynamic int8 quantization)",
    )


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what and where), like every other user error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in a run directory that holds a previous run, deleting that run's files",
    )
    p.add_argument(
        "--init-from",
        metavar="MODEL",
        default=None,
        help="fine-tune: start from this model file's weights, SentencePiece model and output vocabulary "
        "(overrides train.init_from)",
    )


def _add_translate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--input", default=None, help="input file (default stdin)")
    p.add_argument("-o", "--output", default=None, help="output file (default stdout)")
    p.add_argument(
        "--attention",
        default=None,
        metavar="DIR",
        help="also write one attention heatmap per input line into DIR (0001.png, 0002.png, ...)",
    )
    p.add_argument(
        "--alignments",
        default=None,
        metavar="FILE",
        help="also write hard word alignments, one line per input line, Pharaoh i-j (0-based source-target)",
    )
    p.add_argument(
        "--n-best",
        type=_positive("--n-best"),
        default=None,
        metavar="N",
        help="write the N best translations of each line with their scores (N at most the beam size)",
    )
    p.add_argument(
        "--format",
        choices=["moses", "jsonl"],
        default="moses",
        help="of --n-best: Moses lines `line ||| hypothesis ||| score` (default), or a JSON object per line",
    )
    p.add_argument(
        "--buffer-lines",
        type=_positive("--buffer-lines"),
        default=10_000,
        metavar="N",
        help="translate the input N lines at a time (sorted by length inside each), writing each buffer's "
        "translations before reading on; a pause in the input sends what has arrived (default 10000)",
    )


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=_port, default=8000, help="default 8000")
    p.add_argument(
        "--max-lines",
        type=_positive("--max-lines"),
        default=64,
        help="lines per request, more get 413 (default 64)",
    )
    p.add_argument(
        "--max-bytes",
        type=_positive("--max-bytes"),
        default=65536,
        help="request body size, more gets 413 (default 65536)",
    )


def _add_run_tools(sub) -> None:
    """`nmt plot` and `nmt average`: what works on the files of runs."""
    p = sub.add_parser("plot", help="draw training curves of one or several runs (overlaid) into a PNG")
    p.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="run directories of `nmt train` (with metrics.jsonl)"
    )
    p.add_argument(
        "-o",
        "--output",
        default=None,
        help="the PNG (default: RUN_DIR/curves.png for one run, ./curves.png for several)",
    )
    p.set_defaults(run=cmd_plot)

    p = sub.add_parser("average", help="average the weights of models of one run (e.g. its last N snapshots)")
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument("-o", "--output", required=True, help="the averaged model file")
    p.set_defaults(run=cmd_average)


def build_parser() -> argparse.ArgumentParser:
    from nmt import __version__

    parser = Parser(prog="nmt", description="LSTM neural machine translation")
    parser.add_argument("--version", action="version", version=f"nmt {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("data", help="fetch Multi30k into data/multi30k (from NMT_DATA_MIRROR when set)")
    p.add_argument("--dest", default="data/multi30k")
    p.add_argument(
        "--mirror", default=None, help="local folder with the corpus files (default: $NMT_DATA_MIRROR)"
    )
    p.set_defaults(run=cmd_data)

    p = sub.add_parser("train", help="train a model", description="train CONFIG [--section.key=value ...]")
    _add_train_args(p)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("translate", help="translate a text file, one output line per input line")
    _add_decode_args(p)
    _add_translate_args(p)
    p.set_defaults(run=cmd_translate)

    p = sub.add_parser(
        "score",
        help="score given translations (forced decoding): per-token log-probability, sum, tokens",
    )
    _add_decode_args(p)
    p.add_argument("--src", required=True, help="source lines")
    p.add_argument("--tgt", required=True, help="their translations, line by line")
    p.add_argument("-o", "--output", default=None, help="output file (default stdout)")
    p.set_defaults(run=cmd_score)

    p = sub.add_parser("evaluate", help="translate and score with sacreBLEU (BLEU, chrF)")
    _add_decode_args(p)
    p.add_argument("--src", required=True)
    p.add_argument("--ref", required=True)
    p.add_argument(
        "--lang",
        default=None,
        help="the references' language, for the published-style BLEU (lowercased, Moses-normalised and "
        "-tokenized, as Multi30k papers report); default: the --ref file name's ending (.de, .de.gz); "
        "with neither, that score is left out",
    )
    p.add_argument("--json", default=None, help="also write the scores as JSON to this file")
    p.add_argument("-o", "--output", default=None, help="also write the translations to this file")
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("serve", help="a translation web page and JSON API (POST /translate) over a model")
    _add_decode_args(p)
    _add_serve_args(p)
    p.set_defaults(run=cmd_serve)

    _add_run_tools(sub)
    return parser


def configure_logging(quiet: bool, timestamps: bool) -> None:
    """Log `nmt` messages to the current stderr: INFO and up, or warnings only with --quiet. The `nmt` logger
    itself stays at INFO, so a training run's train.log is complete either way."""
    for handler in [h for h in log.handlers if getattr(h, "nmt_cli", False)]:
        log.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.nmt_cli = True
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    fmt = "%(asctime)s %(levelname)s %(message)s" if timestamps else "nmt: %(levelname)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def kernel_cache(capacity: int) -> None:
    """Set the number of compiled kernels oneDNN (torch's CPU kernels) keeps, unless the user set it.

    oneDNN caches a compiled primitive per input shape, 1024 by default, and reads this setting when it first
    needs the cache, so it must be called before any kernel runs (`main` does, first thing).
    Training's length-bucketed batches have hundreds of shapes: under bf16 the default kept growing training's
    memory, past 4.5 GB in half an hour, while 16 kept it at 1.1 GB but trained about 20% slower; 256 is
    between (1.7 GB after 200 steps). Decoding's shapes change at every step (rows leave as sentences end),
    and 8 kept beam 5 of test_2016_flickr in bf16 at 0.47 GiB against 0.54 with 256, no slower."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(capacity))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "train":
        bad = [a for a in extra if not a.startswith("--")]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
        args.overrides = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    configure_logging(args.quiet, args.command == "train")
    kernel_cache(8 if args.command in ("translate", "evaluate", "score", "serve") else 256)
    try:
        args.run(args)
    except NMTError as e:
        print(f"nmt: error: {e}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] == "nmt":
            raise
        print(
            f"nmt: error: the package {e.name!r} is missing (pip install nmt-lstm installs what nmt needs)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("nmt: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error of ours, and no traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    if argv is None and args.command in ("translate", "evaluate", "score"):
        _exit_now()
    return 0


def _exit_now() -> None:
    """End a finished command-line process at once: its outputs are written (files closed and renamed) and
    flushed here, and what is left is the interpreter's teardown of torch's modules, which took 0.6 to 0.7 s
    on 2 cores (`python -c "import torch"` 2.7-2.9 s, the same ending in os._exit 2.0-2.2 s): a sixth of a
    whole greedy translation of 1,000 sentences."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        os._exit(141)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(0)
