"""ISO 639 language names (as SNI's `Input_language` writes them) -> ISO 639-1 codes.

Why: `Record.language` holds codes ("en"), while SNI task files name languages in words. Names not in
the table are kept as given (lower-cased) rather than guessed.
"""
from __future__ import annotations

_CODES = {
    "afrikaans": "af", "amharic": "am", "arabic": "ar", "assamese": "as", "basque": "eu",
    "bengali": "bn", "bulgarian": "bg", "burmese": "my", "catalan": "ca", "chinese": "zh",
    "croatian": "hr", "czech": "cs", "danish": "da", "dutch": "nl", "english": "en", "estonian": "et",
    "filipino": "fil", "finnish": "fi", "french": "fr", "galician": "gl", "german": "de", "greek": "el",
    "gujarati": "gu", "hausa": "ha", "hebrew": "he", "hindi": "hi", "hungarian": "hu", "igbo": "ig",
    "indonesian": "id", "irish": "ga", "italian": "it", "japanese": "ja", "kannada": "kn",
    "khmer": "km", "korean": "ko", "kurdish": "ku", "lao": "lo", "latvian": "lv", "lithuanian": "lt",
    "malay": "ms", "malayalam": "ml", "marathi": "mr", "nepali": "ne", "norwegian": "no",
    "oriya": "or", "panjabi": "pa", "pashto": "ps", "persian": "fa", "polish": "pl",
    "portuguese": "pt", "punjabi": "pa", "romanian": "ro", "russian": "ru", "serbian": "sr",
    "sinhala": "si", "slovak": "sk", "slovenian": "sl", "somali": "so", "spanish": "es",
    "swahili": "sw", "swedish": "sv", "tagalog": "tl", "tamil": "ta", "telugu": "te", "thai": "th",
    "turkish": "tr", "ukrainian": "uk", "urdu": "ur", "vietnamese": "vi", "welsh": "cy",
    "xhosa": "xh", "yoruba": "yo", "zulu": "zu",
}


def language_code(name: str) -> str:
    """"English" -> "en"; a name outside the table is returned trimmed and lower-cased."""
    key = " ".join(name.split()).lower()
    return _CODES.get(key, key)
