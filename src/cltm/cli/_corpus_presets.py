"""`cltm corpus import emodb|ravdess|cremad|esd|iemocap`: the emotional-speech corpus presets, and
`cltm corpus combine` to put their manifests (or any others) into one.

Attached to the `cltm corpus` and `cltm corpus import` groups of :mod:`cltm.cli.corpus`; the library side is
:mod:`cltm.corpus.presets` (the naming conventions are documented there and in docs/corpus.md).
"""

from __future__ import annotations

from pathlib import Path

import typer

from cltm.cli.corpus import DURATIONS_HELP, OUT_HELP, _run_import, corpus_app, import_app

EMOTIONS_HELP = (
    "Keep only these emotions (comma-separated, in the shared vocabulary: neutral, calm, happy, sad, angry, "
    "fearful, disgust, surprised, boredom, contempt, frustration, excited; anger/happiness/sadness/fear/"
    "surprise are accepted too), e.g. angry,happy,neutral,sad for the common four-class subset."
)
STRICT_HELP = "Fail (writing nothing) when any audio file does not follow the corpus's naming convention."
QUIET_HELP = "Print only the one-line summary (what was left out is still printed)."


def _run_preset(name: str, root: Path, out: Path, options: dict, *, durations: bool, quiet: bool) -> None:
    from rich.console import Console
    from rich.markup import escape

    from cltm.corpus.importers import import_corpus
    from cltm.corpus.presets import parse_emotions

    try:  # a bad option is a usage error (exit 2), found before the corpus is walked
        parse_emotions(options.get("emotions"))
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--emotions") from None
    console = Console(stderr=True, soft_wrap=True)

    def show(report) -> None:
        for line in report.lines():
            console.print(f"[yellow]warning:[/yellow] {escape(line)}")

    _run_import(
        lambda: import_corpus(name, root, report=show, **options),
        out,
        durations=durations,
        check_files=False,
        quiet=quiet,
    )


def _root_argument(layout: str) -> Path:
    return typer.Argument(..., help=f"The corpus folder as distributed: {layout}", show_default=False)


_OUT = typer.Option(..., "--out", "-o", help=OUT_HELP, show_default=False)
_EMOTIONS = typer.Option(None, "--emotions", help=EMOTIONS_HELP)
_STRICT = typer.Option(False, "--strict", help=STRICT_HELP)
_DURATIONS = typer.Option(False, "--durations", help=DURATIONS_HELP)
_QUIET = typer.Option(False, "--quiet", "-q", help=QUIET_HELP)


@import_app.command("emodb")
def import_emodb_command(
    root: Path = _root_argument("ROOT/wav/03a01Fa.wav, ..."),
    out: Path = _OUT,
    emotions: str = _EMOTIONS,
    strict: bool = _STRICT,
    durations: bool = _DURATIONS,
    quiet: bool = _QUIET,
) -> None:
    """EmoDB (Berlin, German): 03a01Fa.wav = speaker 03, text a01, emotion F, version a.

    Emotion letters: W anger -> angry, L boredom, E disgust, A fear -> fearful, F happiness -> happy,
    T sadness -> sad, N neutral. Gender and age from the database's speaker list (male 03, 10, 11, 12, 15;
    female 08, 09, 13, 14, 16). Extra columns: text_id, version, age, emotion_code.
    """
    options = {"emotions": emotions, "strict": strict}
    _run_preset("emodb", root, out, options, durations=durations, quiet=quiet)


@import_app.command("ravdess")
def import_ravdess_command(
    root: Path = _root_argument("ROOT/Actor_01/03-01-05-01-02-01-01.wav, ..."),
    out: Path = _OUT,
    emotions: str = _EMOTIONS,
    channel: str = typer.Option(
        None, "--channel", help="Keep only the speech or the song recordings (default: both)."
    ),
    strict: bool = _STRICT,
    durations: bool = _DURATIONS,
    quiet: bool = _QUIET,
) -> None:
    """RAVDESS (English): modality-channel-emotion-intensity-statement-repetition-actor.wav.

    Emotions 01 neutral, 02 calm, 03 happy, 04 sad, 05 angry, 06 fearful, 07 disgust, 08 surprised; odd
    actors male, even female. Video-only files (modality 02) are skipped and reported. Extra columns:
    modality, vocal_channel (speech/song), intensity (normal/strong), statement, text, repetition.
    """
    options = {"emotions": emotions, "vocal_channel": channel, "strict": strict}
    _run_preset("ravdess", root, out, options, durations=durations, quiet=quiet)


@import_app.command("cremad")
def import_cremad_command(
    root: Path = _root_argument("ROOT/AudioWAV/1001_DFA_ANG_XX.wav, ... (+ VideoDemographics.csv)"),
    out: Path = _OUT,
    emotions: str = _EMOTIONS,
    demographics: Path = typer.Option(
        None,
        "--demographics",
        help="CREMA-D's VideoDemographics.csv (ActorID, Age, Sex, Race, Ethnicity), when it is not in ROOT "
        "or its parent. Without it, gender is missing.",
    ),
    strict: bool = _STRICT,
    durations: bool = _DURATIONS,
    quiet: bool = _QUIET,
) -> None:
    """CREMA-D (English): ACTOR_SENTENCE_EMOTION_LEVEL.wav, e.g. 1001_DFA_ANG_XX.wav.

    Emotions ANG angry, DIS disgust, FEA fearful, HAP happy, NEU neutral, SAD sad; level LO/MD/HI/XX ->
    intensity low/medium/high/unspecified. A recording present as both .wav and .mp3 is kept once (.wav).
    Extra columns: sentence, text, intensity, age, race, ethnicity.
    """
    options = {"emotions": emotions, "demographics": demographics, "strict": strict}
    _run_preset("cremad", root, out, options, durations=durations, quiet=quiet)


@import_app.command("esd")
def import_esd_command(
    root: Path = _root_argument("ROOT/0011/Angry/[train|evaluation|test/]0011_000351.wav, ..."),
    out: Path = _OUT,
    emotions: str = _EMOTIONS,
    strict: bool = _STRICT,
    durations: bool = _DURATIONS,
    quiet: bool = _QUIET,
) -> None:
    """ESD (Mandarin zh: speakers 0001-0010; English en: 0011-0020): SPEAKER/EMOTION/[SPLIT/]SPK_NNNNNN.wav.

    Emotion folders Angry, Happy, Neutral, Sad, Surprise; split folders train, evaluation (-> dev), test
    when the release has them. Gender from the release's speaker list. Extra columns: utterance, text (from
    SPEAKER/SPEAKER.txt when present).
    """
    options = {"emotions": emotions, "strict": strict}
    _run_preset("esd", root, out, options, durations=durations, quiet=quiet)


@import_app.command("iemocap")
def import_iemocap_command(
    root: Path = _root_argument("ROOT/Session1..5/{sentences/wav, dialog/EmoEvaluation}"),
    out: Path = _OUT,
    emotions: str = _EMOTIONS,
    merge_excited: bool = typer.Option(
        False, "--merge-excited", help="Count excited (exc) as happy, the usual four-class IEMOCAP setup."
    ),
    strict: bool = _STRICT,
    durations: bool = _DURATIONS,
    quiet: bool = _QUIET,
) -> None:
    """IEMOCAP (English): sentence wavs labelled from dialog/EmoEvaluation/*.txt.

    Codes neu, hap, exc, sad, ang, fru, fea, sur, dis -> neutral, happy, excited, sad, angry, frustration,
    fearful, surprised, disgust; xxx (no agreement) and oth (other) keep a missing emotion. Speaker =
    session + the F/M letter of the utterance id's last part (e.g. iemocap/Ses01F); gender from that
    letter. Extra columns: session, dialog, mode (improvised/scripted), valence, activation, dominance.
    """
    options = {"emotions": emotions, "merge_excited": merge_excited, "strict": strict}
    _run_preset("iemocap", root, out, options, durations=durations, quiet=quiet)


@corpus_app.command("combine")
def combine_command(
    manifests: list[Path] = typer.Argument(
        ...,
        help="Manifest files to combine (.parquet, .csv or .tsv), e.g. one per corpus.",
        show_default=False,
    ),
    out: Path = _OUT,
    quiet: bool = _QUIET,
) -> None:
    """Combine manifests into one (e.g. EmoDB + ESD + CREMA-D for a cross-lingual emotion study).

    Rows keep the given order; label columns are united (null where a corpus has none). A utt_id found in
    two files is refused. Relative audio paths are made absolute.
    """
    from cltm.corpus.presets import combine_manifests

    _run_import(lambda: combine_manifests(manifests), out, durations=False, check_files=False, quiet=quiet)
