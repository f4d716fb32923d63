"""The text front end of the synthesiser: normalisation, symbols, optional espeak-ng phonemes, sentences.

``normalize_text`` turns display text into what is read aloud: lower case, numbers and common
abbreviations spelled out, and only the punctuation that shapes prosody kept (``, . ? ! ; :`` and
apostrophes inside words)::

    >>> normalize_text("Dr. Smith paid $5.50 on May 3rd, 1999.")
    'doctor smith paid five dollars, fifty cents on may third, nineteen ninety nine.'

``text_to_ids`` maps normalised text (letters) or its IPA transcription (``TextConfig(phonemes=True)``,
through ``espeak-ng -q --ipa``) onto one fixed symbol table, ``SYMBOLS``, and appends the end-of-sequence
symbol. Letters and phonemes share the table, so a checkpoint's embedding size never depends on the mode.
Text with nothing pronounceable left after normalisation raises ``ValueError``.
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "TextConfig",
    "SYMBOLS",
    "PAD",
    "EOS",
    "PAD_ID",
    "EOS_ID",
    "normalize_text",
    "number_to_words",
    "ordinal_to_words",
    "year_to_words",
    "phonemize",
    "split_sentences",
    "text_to_ids",
    "texts_to_ids",
    "ids_to_text",
]

PAD = "_"
EOS = "~"
PUNCTUATION = ",.?!;:'"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
# The IPA that espeak-ng writes for English (and a margin of other common symbols), stress and length.
IPA = "ɑɐɒæɓʙβɔɕçɗɖðʤəɘɚɛɜɝɞɟʄɡɠɢʛɦɧħɥʜɨɪʝɭɬɫɮʟɱɯɰŋɳɲɴøɵɸθœɶʘɹɺɾɻʀʁɽʂʃʈʧʉʊʋⱱʌɣɤʍχʎʏʑʐʒʔʡʕʢǀǁǂǃᵻˈˌːˑ̩̃ʰʲ"
SYMBOLS: tuple[str, ...] = tuple(
    dict.fromkeys([PAD, EOS, " ", *PUNCTUATION, *LETTERS, *IPA])  # ordered, without duplicates
)
PAD_ID = SYMBOLS.index(PAD)
EOS_ID = SYMBOLS.index(EOS)
_SYMBOL_TO_ID = {s: i for i, s in enumerate(SYMBOLS)}


@dataclass(frozen=True)
class TextConfig:
    """How text becomes symbol ids. Stored with every model."""

    phonemes: bool = False  # IPA from espeak-ng instead of letters
    espeak_voice: str = "en-us"
    max_sentence_chars: int = 180  # longer sentences are split at commas, then at spaces


# --- numbers --------------------------------------------------------------------------------------

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_WORDS = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
    "nine": "ninth", "twelve": "twelfth",
}  # fmt: skip


def _below_thousand(n: int) -> str:
    words = []
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10] + (f" {_ONES[n % 10]}" if n % 10 else ""))
    elif n or not words:
        words.append(_ONES[n])
    return " ".join(words)


def number_to_words(n: int) -> str:
    """A cardinal in words: ``1234 -> "one thousand two hundred thirty four"``; negatives get "minus".

    Numbers of a quadrillion and more are read digit by digit.
    """
    if n < 0:
        return f"minus {number_to_words(-n)}"
    if n >= 10**15:
        return " ".join(_ONES[int(d)] for d in str(n))
    words = []
    for scale, name in _SCALES:
        if n >= scale:
            words += [_below_thousand(n // scale), name]
            n %= scale
    if n or not words:
        words.append(_below_thousand(n))
    return " ".join(words)


def ordinal_to_words(n: int) -> str:
    """``21 -> "twenty first"``, ``100 -> "one hundredth"``."""
    words = number_to_words(n).split()
    last = words[-1]
    if last in _ORDINAL_WORDS:
        words[-1] = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def year_to_words(n: int) -> str:
    """A year as read aloud: 1999 "nineteen ninety nine", 1905 "nineteen oh five", 1900 "nineteen
    hundred", 2005 "two thousand five", 2019 "twenty nineteen". Outside 1000-2999: a cardinal."""
    if not 1000 <= n <= 2999 or (2000 <= n <= 2009):
        return number_to_words(n)
    high, low = divmod(n, 100)
    if low == 0:
        return f"{number_to_words(high)} hundred"
    if low < 10:
        return f"{number_to_words(high)} oh {number_to_words(low)}"
    return f"{number_to_words(high)} {number_to_words(low)}"


def _digits(text: str) -> str:
    return " ".join(_ONES[int(d)] for d in text)


_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
               "€": ("euro", "euros", "cent", "cents")}  # fmt: skip


def _money(match: re.Match) -> str:
    unit, main, cents, scale = match.group(1), match.group(2).replace(",", ""), match.group(3), match.group(4)
    one, many, sub_one, sub_many = _CURRENCIES[unit]
    main_value = int(main) if main else 0
    if scale:  # "$5 million", "$2.5 billion"
        amount = f"{main}.{cents}" if cents else main
        return f"{_spell_number(amount)} {scale.lower()} {many}"
    cents_value = int(cents.ljust(2, "0")[:2]) if cents else 0
    parts = []
    if main_value or not cents_value:
        parts.append(f"{number_to_words(main_value)} {one if main_value == 1 else many}")
    if cents_value:
        parts.append(f"{number_to_words(cents_value)} {sub_one if cents_value == 1 else sub_many}")
    return ", ".join(parts)


def _spell_number(text: str) -> str:
    """``"3.14" -> "three point one four"``, ``"42" -> "forty two"``."""
    whole, _, fraction = text.partition(".")
    words = number_to_words(int(whole)) if whole else "zero"
    return f"{words} point {_digits(fraction)}" if fraction else words


def _number(match: re.Match) -> str:
    text = match.group(0)
    if "." in text:
        return _spell_number(text)
    value = int(text)
    if len(text) == 4 and 1000 <= value <= 2999:
        return year_to_words(value)
    if len(text) > 1 and text.startswith("0"):
        return _digits(text)  # "007", a code rather than a quantity
    return number_to_words(value)


# --- abbreviations --------------------------------------------------------------------------------

_ABBREVIATIONS = [
    (r"mrs", "missus"), (r"mr", "mister"), (r"ms", "miz"), (r"dr", "doctor"), (r"prof", "professor"),
    (r"jr", "junior"), (r"sr", "senior"), (r"capt", "captain"), (r"gen", "general"), (r"lt", "lieutenant"),
    (r"col", "colonel"), (r"sgt", "sergeant"), (r"rev", "reverend"), (r"hon", "honorable"),
    (r"mt", "mount"), (r"ft", "fort"), (r"co", "company"), (r"ltd", "limited"), (r"approx", "approximately"),
    (r"vs", "versus"), (r"dept", "department"), (r"est", "established"),
]  # fmt: skip
_ABBREVIATION_RES = [(re.compile(rf"\b{a}\.", re.IGNORECASE), word) for a, word in _ABBREVIATIONS]
_SENTENCE_END_AHEAD = r"(?=\s+(?-i:[A-Z])|\s*$)"  # the abbreviation's period also ends a sentence


def _expand_abbreviations(text: str) -> str:
    text = re.sub(r"\be\.\s?g\.(,?)", r"for example\1", text, flags=re.IGNORECASE)
    text = re.sub(r"\bi\.\s?e\.(,?)", r"that is\1", text, flags=re.IGNORECASE)
    text = re.sub(rf"\betc\.{_SENTENCE_END_AHEAD}", "et cetera.", text, flags=re.IGNORECASE)
    text = re.sub(r"\betc\b\.?", "et cetera", text, flags=re.IGNORECASE)
    text = re.sub(r"\bvs\b\.?", "versus", text, flags=re.IGNORECASE)
    text = re.sub(r"\bno\.\s*(?=\d)", "number ", text, flags=re.IGNORECASE)
    # "St." is "street" after a capitalised name ("Baker St.") and "saint" otherwise ("St. Louis").
    after_name = r"\b((?-i:[A-Z])[a-z]*\s+)st\."
    text = re.sub(after_name + _SENTENCE_END_AHEAD, r"\1street.", text, flags=re.IGNORECASE)
    text = re.sub(after_name, r"\1street", text, flags=re.IGNORECASE)
    text = re.sub(r"\bst\.", "saint", text, flags=re.IGNORECASE)
    for pattern, word in _ABBREVIATION_RES:
        text = pattern.sub(word, text)
    return text


# --- normalisation --------------------------------------------------------------------------------

_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u201c": '"', "\u201d": '"'})
_CURRENCY_RE = re.compile(
    r"([$£€])\s?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?:\s+(million|billion|trillion|thousand)\b)?",
    re.IGNORECASE,
)
_GROUPED_RE = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,])")  # "1,250": a quantity, never a year
_ORDINAL_RE = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_PERCENT_RE = re.compile(r"(\d+(?:\.\d+)?)\s?%")
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")
_NEGATIVE_RE = re.compile(r"(?<![\w.])-(?=\d)")
_BREAKS_RE = re.compile(r"\s*[\u2014\u2013()\[\]{}]+\s*|\s+-{2,}\s*|\s+-\s+")  # dashes, brackets: a pause
_NOT_KEPT_RE = re.compile(r"[^a-z,.?!;:' ]+")
_EDGE_APOSTROPHE_RE = re.compile(r"(?<![a-z])'+|'+(?![a-z])")
_SPACE_BEFORE_PUNCT_RE = re.compile(r"\s+([,.?!;:])")
_PUNCT_RUN_RE = re.compile(r"[,.?!;:](?:\s*[,.?!;:])+")
_PUNCT_STRENGTH = "?!.;:,"  # a run of marks keeps its strongest: "?!" -> "?", ",." -> "."
_LEADING_PUNCT_RE = re.compile(r"^[\s,.?!;:]+")


def normalize_text(text: str) -> str:
    """Display text -> the lower-case words that are read aloud, with prosodic punctuation.

    Numbers: cardinals, ordinals (``3rd``), four-digit years, decimals (``3.14``), percentages,
    ``1,000``-style thousands and currency (``$5``, ``$5.50``, ``£3``, ``$2 million``) become words.
    Abbreviations (Mr, Mrs, Dr, St, etc, vs, e.g., i.e., ...) are expanded. Accents are folded; dashes
    and brackets become commas; other symbols go; ``&`` is "and", ``+`` "plus", ``@`` "at".

    Raises:
        ValueError: when no letter is left (empty, or only symbols), so there is nothing to say.
    """
    original = text
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).translate(_QUOTES)
    text = _expand_abbreviations(text)
    text = _CURRENCY_RE.sub(_money, text)
    text = _GROUPED_RE.sub(lambda m: _spell_number(m.group(0).replace(",", "")), text)
    text = _ORDINAL_RE.sub(lambda m: ordinal_to_words(int(m.group(1))), text)
    text = _PERCENT_RE.sub(lambda m: f"{_spell_number(m.group(1))} percent", text)
    text = _NEGATIVE_RE.sub("minus ", text)
    text = _NUMBER_RE.sub(_number, text)
    text = text.replace("&", " and ").replace("+", " plus ").replace("@", " at ")
    text = _BREAKS_RE.sub(", ", text)
    text = text.lower().replace("-", " ").replace("/", " ")
    text = _NOT_KEPT_RE.sub(" ", text)
    text = _EDGE_APOSTROPHE_RE.sub(" ", text)
    text = " ".join(text.split())
    text = _SPACE_BEFORE_PUNCT_RE.sub(r"\1", text)
    text = _PUNCT_RUN_RE.sub(lambda m: min(m.group(0).replace(" ", ""), key=_PUNCT_STRENGTH.index), text)
    text = _LEADING_PUNCT_RE.sub("", text)
    if not re.search("[a-z]", text):
        raise ValueError(f"nothing pronounceable in the text {original!r}")
    return text


# --- sentences ------------------------------------------------------------------------------------


def _split_long(sentence: str, max_chars: int) -> list[str]:
    """Cut at clause punctuation, then at spaces, so every piece has at most ``max_chars``."""
    if len(sentence) <= max_chars:
        return [sentence]
    pieces, current = [], ""
    for clause in re.findall(r"[^,;:]+[,;:]?\s*", sentence):
        clause = clause.strip()
        if current and len(current) + 1 + len(clause) > max_chars:
            pieces.append(current)
            current = ""
        current = f"{current} {clause}".strip()
    if current:
        pieces.append(current)
    out = []
    for piece in pieces:
        while len(piece) > max_chars:
            cut = piece.rfind(" ", 0, max_chars + 1)
            cut = cut if cut > 0 else max_chars
            out.append(piece[:cut].strip())
            piece = piece[cut:].strip()
        if piece:
            out.append(piece)
    return out


def split_sentences(text: str, *, max_chars: int = 180) -> list[str]:
    """Normalised text -> sentences (split after ``. ? !``), each at most ``max_chars`` characters.

    Long sentences are split at ``, ; :``, then at spaces. Pieces without a letter are dropped.
    """
    sentences = [s.strip() for s in re.split(r"(?<=[.?!])\s+", text) if s.strip()]
    out = []
    for sentence in sentences:
        out += _split_long(sentence, max_chars)
    return [s for s in out if re.search("[a-z]", s)]


# --- phonemes -------------------------------------------------------------------------------------

_CHUNK_RE = re.compile(r"([,.?!;:]+)")
_LANGUAGE_SWITCH_RE = re.compile(r"\([a-z-]+\)")  # espeak marks words it reads in another language


def _run_espeak(lines: list[str], voice: str) -> list[str]:
    """The raw output lines of one ``espeak-ng -q --ipa`` process reading ``lines`` from stdin."""
    try:
        result = subprocess.run(
            ["espeak-ng", "-q", "--ipa", "-v", voice],
            input="\n".join(lines) + "\n",
            capture_output=True,
            text=True,
            check=True,
        )
    except FileNotFoundError:
        raise RuntimeError("phoneme input needs espeak-ng (apt-get install espeak-ng)") from None
    except subprocess.CalledProcessError as err:
        raise RuntimeError(f"espeak-ng -v {voice} failed: {err.stderr.strip()}") from None
    return result.stdout.rstrip("\n").split("\n")


def _espeak(lines: list[str], voice: str) -> list[str]:
    """One IPA string per input line. espeak-ng reads stdin a line at a time and answers each with a
    line; should it ever split one, every line is redone in a process of its own."""
    if not lines:
        return []
    out = _run_espeak(lines, voice)
    if len(out) != len(lines):
        out = [" ".join(_run_espeak([line], voice)) for line in lines]
    return [" ".join(_LANGUAGE_SWITCH_RE.sub("", o).split()) for o in out]


def phonemize(texts: Sequence[str], *, voice: str = "en-us") -> list[str]:
    """Normalised texts -> IPA (stress marks and length included), keeping their punctuation.

    Each text is cut at punctuation; all the word chunks of all texts go to a single ``espeak-ng -q
    --ipa -v VOICE`` process, one per line, and the punctuation is put back between them.
    """
    chunked = [_CHUNK_RE.split(text) for text in texts]  # words, punct, words, punct, ...
    words = [part.strip() for parts in chunked for part in parts[::2] if part.strip()]
    ipa = iter(_espeak(words, voice))
    out = []
    for parts in chunked:
        pieces = []
        for i, part in enumerate(parts):
            if i % 2 == 1:
                pieces.append(part)
            elif part.strip():
                pieces.append((" " if pieces else "") + next(ipa))
        out.append("".join(pieces).strip())
    return out


# --- ids ------------------------------------------------------------------------------------------


def _symbols_to_ids(text: str) -> list[int]:
    ids = [_SYMBOL_TO_ID[ch] for ch in text if ch in _SYMBOL_TO_ID and ch not in (PAD, EOS)]
    return ids + [EOS_ID]


def texts_to_ids(
    texts: Sequence[str], cfg: TextConfig | None = None, *, normalized: bool = False
) -> list[list[int]]:
    """Symbol ids (ending in ``EOS_ID``) of several texts; phonemisation is batched into one process.

    Args:
        normalized: the texts already went through :func:`normalize_text`.
    Raises:
        ValueError: a text with nothing pronounceable (the message quotes it).
    """
    cfg = cfg or TextConfig()
    texts = list(texts) if normalized else [normalize_text(t) for t in texts]
    if cfg.phonemes:
        phones = phonemize(texts, voice=cfg.espeak_voice)
        for text, ph in zip(texts, phones, strict=True):
            if not re.search(r"[^\s,.?!;:']", ph):
                raise ValueError(f"espeak-ng found nothing to pronounce in {text!r}")
        texts = phones
    return [_symbols_to_ids(t) for t in texts]


def text_to_ids(text: str, cfg: TextConfig | None = None, *, normalized: bool = False) -> list[int]:
    """Symbol ids of one text, ending in ``EOS_ID``. See :func:`texts_to_ids`."""
    return texts_to_ids([text], cfg, normalized=normalized)[0]


def ids_to_text(ids: Sequence[int]) -> str:
    """The symbols of ``ids`` as a string, without padding and end-of-sequence."""
    return "".join(SYMBOLS[i] for i in ids if i not in (PAD_ID, EOS_ID))
