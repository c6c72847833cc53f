"""CIDEr-D as pycocoevalcap reports it, with its PTBTokenizer re-implemented in Python (no Java).

This is an `evaluate` module loaded by path. `evaluate` copies this single file into its module cache, so it imports
only the standard library, `datasets` and `evaluate`.
"""

from __future__ import annotations

import math
import re
import unicodedata

import datasets
import evaluate

_CITATION = """\
@inproceedings{vedantam2015cider,
  title={{CIDEr}: Consensus-based Image Description Evaluation},
  author={Vedantam, Ramakrishna and Zitnick, C Lawrence and Parikh, Devi},
  booktitle={CVPR},
  year={2015}
}
"""

_DESCRIPTION = """\
CIDEr-D as the COCO caption evaluation (tylin/coco-caption, salaniz/pycocoevalcap) computes it:

1. Tokenisation, as pycocoevalcap's `PTBTokenizer` runs Stanford CoreNLP 3.4.1's PTBTokenizer
   (`-preserveLines -lowerCase`) on all captions of one side joined by newlines (each caption's own newlines become
   spaces), then drops the tokens listed in its `PUNCTUATIONS` (`'' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ...
   ;`). This module re-implements that lexer's rules (PTBLexer.flex at CoreNLP v3.4.1, default options: parentheses
   and brackets normalised, LaTeX quotes, PTB3 ellipsis and dashes, assimilations split, no americanisation, no
   slash escaping). Some consequences: tokens are lowercased *after* tokenising, so "-LRB-" becomes "-lrb-" and is
   not dropped (parentheses stay as "-lrb-" / "-rrb-"); "cannot" -> "can not", "gonna" -> "gon na"; "don't" ->
   "do n't"; "p.m.", "U.S.A." and any single letter followed by "." ("a.") are one token; "$5" -> "$ 5";
   "50%" -> "50 %"; "#1" -> "# 1"; "&" and "%" are kept; "..." and "--" are dropped. References are tokenised in
   one stream and predictions in another, in input order, as pycocoevalcap does (a rule may look at the next
   caption).
2. `CiderScorer` (n = 4, sigma = 6): per image, 1- to 4-gram counts; document frequencies over the references of
   the scored images; tf-idf vectors with idf = log(N) - log(max(1, df)); per order the clipped cosine
   sum min(c, r) r / (|c| |r|) times the Gaussian length penalty exp(-(l_c - l_r)^2 / (2 sigma^2)) with l the
   number of bigrams; the image score is 10 x the mean over orders of the mean over references; `cider` is the mean
   over images (pycocoevalcap's scale: COCO papers print it x 100).

The idf comes from the scored set, so a score depends on which images are scored together and a single image always
scores 0, as in pycocoevalcap.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): one caption per image.
    references (`list[list[str]]`): the reference captions of each image (5 for COCO), at least one.
    n (`int`, defaults to 4): largest n-gram order.
    sigma (`float`, defaults to 6.0): standard deviation of the Gaussian length penalty.
    tokenize (`bool`, defaults to `True`): apply the PTB tokenisation above; `False` for text already tokenised
        (split on whitespace only).
Returns:
    cider (`float`): the corpus CIDEr-D (mean over images).
    per_question (`list[float]`): the CIDEr-D of each image.
Examples:
    >>> cider = evaluate.load("recipes/eval/metrics/cider")
    >>> result = cider.compute(
    ...     predictions=["a red cube on a table", "two blue balls on the grass"],
    ...     references=[["a red cube on a table"], ["two blue balls on the grass"]],
    ... )
    >>> round(result["cider"], 6)
    10.0
"""

# ======================================================================================================================
# PTBTokenizer (Stanford CoreNLP 3.4.1 PTBLexer.flex), re-implemented from its rules.
#
# The lexer is a JFlex scanner: at each position every rule is tried, the longest match wins (a trailing context
# r1/r2 counts towards the length, but only r1 is the token), ties go to the earlier rule. `%caseless` makes literal
# text case-insensitive but not character classes ("[A]z" matches "Az" and "AZ", not "az"). JFlex reads UTF-16 and its
# classes cover the Basic Multilingual Plane only, so characters above U+FFFF are letters or digits for no rule.
# ======================================================================================================================


def _bmp_class(predicate) -> str:
    """A regex character-class body with every BMP code point for which `predicate(char)` holds."""
    ranges, start, previous = [], None, None
    for code in range(0x10000):
        if 0xD800 <= code <= 0xDFFF or not predicate(chr(code)):
            continue
        if start is not None and code == previous + 1:
            previous = code
            continue
        if start is not None:
            ranges.append((start, previous))
        start = previous = code
    if start is not None:
        ranges.append((start, previous))
    return "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in ranges)


# [:letter:] is Java's Character.isLetter (categories L*), [:digit:] its isDigit (Nd), BMP only. Python's \w is
# letters + digits + the other numerics (No, Nl): spelling the classes as "\w minus those numerics minus the astral
# planes" keeps the patterns short (explicit classes of every letter make the module take seconds to compile).
_NUMERIC_NOT_LETTER = _bmp_class(lambda char: unicodedata.category(char) in ("No", "Nl") and char.isalnum())
_ASTRAL = "\U00010000-\U0010ffff"
_L = f"(?:(?![{_NUMERIC_NOT_LETTER}{_ASTRAL}])[^\\W\\d_])"  # [:letter:]
_D = f"(?:(?![{_ASTRAL}])\\d)"  # [:digit:]
_LD = f"(?:(?![{_NUMERIC_NOT_LETTER}{_ASTRAL}])[^\\W_])"  # [:letter:]|[:digit:]
_UPPERCASE = _bmp_class(lambda char: unicodedata.category(char) == "Lu")  # [:uppercase:]


def _ci(text: str) -> str:
    """A %caseless literal: each cased character matches its lower and upper case."""
    out = []
    for char in text:
        if char.lower() != char.upper():
            out.append(f"[{re.escape(char.lower())}{re.escape(char.upper())}]")
        else:
            out.append(re.escape(char))
    return "".join(out)


def _words(spec: str) -> str:
    """An alternation of caseless words written as in PTBLexer.flex: "[A]z" keeps the bracketed letter's case,
    "s?" makes the previous letter optional, "\\." is a period. Longest words first so the regex prefers them."""
    alternatives = []
    for word in spec.split("|"):
        pattern, index = [], 0
        while index < len(word):
            if word[index] == "[":
                end = word.index("]", index)
                pattern.append(word[index : end + 1])  # a character class: case-sensitive
                index = end + 1
            elif word[index] == "?":
                pattern.append("?")
                index += 1
            elif word[index] == "\\":
                pattern.append(re.escape(word[index + 1]))
                index += 2
            elif word[index] == "(":
                end = word.index(")", index)
                pattern.append("(?:" + "|".join(_ci(part) for part in word[index + 1 : end].split("/")) + ")")
                index = end + 1
            else:
                pattern.append(_ci(word[index]))
                index += 1
        alternatives.append("".join(pattern))
    return "(?:" + "|".join(sorted(alternatives, key=len, reverse=True)) + ")"


_SGML = (
    r"<(?:[!?][A-Za-z\-][^>\r\n]*"
    r"|[A-Za-z][A-Za-z0-9_:.\-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.\-]*[ ]*=[ ]*(?:'[^']*'|\"[^\"]*\")"
    r"|[A-Za-z][A-Za-z0-9_:.\-]*))*[ ]*/?"
    r"|/[A-Za-z][A-Za-z0-9_:.\-]*)[ ]*>"
)
_SPMDASH = f"(?:&(?:{_ci('mdash')}|{_ci('ndash')}|{_ci('MD')});|[\u0096\u0097\u2013\u2014\u2015])"
_SPAMP = _ci("&amp;")
_SPPUNC = "&(?:" + "|".join(_ci(w) for w in ("HT", "TL", "UR", "LR", "QC", "QL", "QR", "odq", "cdq")) + "|#[0-9]+);"
_SPLET = f"&[aeiouAEIOU](?:{_ci('acute')}|{_ci('grave')}|{_ci('uml')});"
_SPACE = "[ \t\u00a0\u2000-\u200a\u3000]"
_NEWLINE = "(?:\r?\n|\r|\u2028|\u2029|\u000b|\u000c|\u0085)"
_SPACENL = f"(?:{_SPACE}|{_NEWLINE})"
_SENTEND = f"{_SPACENL}(?:{_SPACENL}|[{_UPPERCASE}]|{_SGML})"
_DIGIT = f"(?:{_D}|[\u07c0-\u07c9])"
_DATE = f"{_DIGIT}{{1,2}}[\\-/]{_DIGIT}{{1,2}}[\\-/]{_DIGIT}{{2,4}}"
_NUM = f"(?:{_DIGIT}*(?:[.:,\u00ad\u066b\u066c]{_DIGIT}+)+|{_DIGIT}+)"
_NUMBER = f"[\\-+]?{_NUM}"
_SUBSUPNUM = "[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+)"
_FRAC = f"(?:{_DIGIT}{{1,4}}[\\- \u00a0])?{_DIGIT}{{1,4}}(?:\\\\?/|\u2044){_DIGIT}{{1,4}}"
_FRAC2 = "[\u00bc\u00bd\u00be\u2153-\u215e]"
_DOLSIGN = "(?:[A-Z]*\\$|#)"
_DOLSIGN2 = "[\u00a2\u00a3\u00a4\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]"
_EXTRA_LETTERS = (
    "\u00ad\u0237-\u024f\u02c2-\u02c5\u02d2-\u02df\u02e5-\u02ff\u0300-\u036f\u0370-\u037d\u0384\u0385\u03cf\u03f6"
    "\u03fc-\u03ff\u0483-\u0487\u04cf\u04f6-\u04ff\u0510-\u0525\u055a-\u055f\u0591-\u05bd\u05bf\u05c1\u05c2\u05c4"
    "\u05c5\u05c7\u0615-\u061a\u063b-\u063f\u064b-\u065e\u0670\u06d6-\u06ef\u06fa-\u06ff\u070f\u0711\u0730-\u074f"
    "\u0750-\u077f\u07a6-\u07b1\u07ca-\u07f5\u07fa\u0900-\u0903\u093c\u093e-\u094e\u0951-\u0955\u0962-\u0963"
    "\u0981-\u0983\u09bc-\u09c4\u09c7\u09c8\u09cb-\u09cd\u09d7\u09e2\u09e3\u0a01-\u0a03\u0a3c\u0a3e-\u0a4f"
    "\u0a81-\u0a83\u0abc-\u0acf\u0b82\u0bbe-\u0bc2\u0bc6-\u0bc8\u0bca-\u0bcd\u0c01-\u0c03\u0c3e-\u0c56\u0d3e-\u0d44"
    "\u0d46-\u0d48\u0e30-\u0e3a\u0e47-\u0e4e\u0eb1-\u0ebc\u0ec8-\u0ecd"
)
_LETTER = f"(?:{_L}|[{_EXTRA_LETTERS}]|{_SPLET})"
_LETTER_OR_DIGIT = f"(?:{_LETTER}|{_DIGIT})"
_WORD = f"{_LETTER}{_LETTER_OR_DIGIT}*(?:[.!?]{_LETTER}{_LETTER_OR_DIGIT}*)*"
_FILENAME_EXT = _words(
    "bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png|ppt|ps|py|"
    "sql|tar|txt|wav|x|xml|zip"
)
_FILENAME = f"{_LETTER_OR_DIGIT}+(?:\\.{_LETTER_OR_DIGIT}+)*(?:\\.{_FILENAME_EXT})"
_APOS = f"(?:['\u0092\u2019]|{_ci('&apos;')})"
_APOSETCETERA = f"(?:{_APOS}|[`\u0091\u2018\u201b])"
_HYPHEN = "[\\-_\u058a\u2010\u2011]"
_THING = f"(?:[dDoOlL]{_APOSETCETERA}{_LD})?{_LD}+(?:{_HYPHEN}(?:[dDoOlL]{_APOSETCETERA}{_LD})?{_LD}+)*"
_THINGA = f"[A-Z]+(?:(?:[+&]|{_SPAMP})[A-Z]+)+"
_THING3 = "[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
_ACRO_SPECIAL = (
    f"(?:{_words('Canada|Sino|Korean|EU|Japan|non')}-{_ci('U.S')}|{_ci('U.S.-')}(?:{_ci('U.S.S.R')}|{_ci('U.K')}))"
)
_ACRO = ("[A-Za-z](?:\\.[A-Za-z])*", _ACRO_SPECIAL)  # alternatives, tried separately for the longest match
_ACRO2 = ("[A-Za-z](?:\\.[A-Za-z])+", _ACRO_SPECIAL)
_HTHING = f"[A-Za-z0-9][A-Za-z0-9.,\u00ad]*(?:-(?:(?:{_ACRO2[0]}|{_ACRO_SPECIAL})\\.|[A-Za-z0-9\u00ad]+))+"
_REDAUX = f"{_APOS}(?:[msdMSD]|{_ci('re')}|{_ci('ve')}|{_ci('ll')})"
_SWORD = "[A-Za-z\u00ad]*[A-MO-Za-mo-z]\u00ad*"
_SREDAUX = f"{_ci('n')}{_APOSETCETERA}{_ci('t')}"
_APOWORD = (
    f"{_APOS}{_ci('n')}{_APOS}?",
    f"[lLdDjJ]{_APOS}",
    f"{_ci('Dunkin')}{_APOS}",
    f"{_ci('somethin')}{_APOS}",
    f"{_ci('ol')}{_APOS}",
    f"{_APOS}{_ci('em')}",
    f"[A-HJ-XZn]{_APOSETCETERA}{_L}{{2}}{_L}*",
    f"{_APOS}[2-9]0{_ci('s')}",
    f"{_APOS}{_ci('til')}{_ci('l')}?",
    f"{_L}{_L}*[aeiouyAEIOUY]{_APOSETCETERA}[aeiouA-Z]{_L}*",
    f"{_APOS}{_ci('cause')}",
    f"{_ci('cont')}'{_ci('d')}\\.?",
    f"'{_ci('twas')}",
    f"{_ci('nor')}'{_ci('easter')}",
    f"{_ci('c')}'{_ci('mon')}",
    f"{_ci('e')}'{_ci('er')}",
    f"{_ci('s')}'{_ci('mores')}",
    f"{_ci('ev')}'{_ci('ry')}",
    f"{_ci('li')}'{_ci('l')}",
    f"{_ci('nat')}'{_ci('l')}",
    f"{_ci('O')}{_APOSETCETERA}{_ci('o')}",
)
_APOWORD2 = f"{_ci('y')}{_APOS}"
_FULLURL = f'{_ci("http")}{_ci("s")}?://[^ \t\n\f\r"<>|(){{}}]+[^ \t\n\f\r"<>|.!?(){{}},\\-]'
_URL_PATH = '(?:/[^ \t\n\f\r"<>|()]+[^ \t\n\f\r"<>|.!?(){},\\-])?'
_LIKELYURL = (
    f'{_ci("www.")}(?:[^ \t\n\f\r"<>|.!?(){{}},]+\\.)+[a-zA-Z]{{2,4}}{_URL_PATH}',
    # ",-_" is a range (U+002C..U+005F) in the original class too: digits and capitals are excluded.
    f"(?:[^ \t\n\f\r\"`'<>|.!?(){{}},-_$]+\\.)+{_words('com|net|org|edu')}{_URL_PATH}",
)
_EMAIL = (
    f'(?:{_ci("&lt;")}|<)?[a-zA-Z0-9][^ \t\n\f\r"<>|()\u00a0{{}}]*@(?:[^ \t\n\f\r"<>|(){{}}.\u00a0]+\\.)*'
    f'[^ \t\n\f\r"<>|(){{}}.\u00a0]+(?:{_ci("&gt;")}|>)?'
)
_TWITTER = f"(?:@[a-zA-Z_][a-zA-Z_0-9]*|#{_LETTER}+)"
_ABMONTH = "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"
_ABDAYS = "Mon|Tue|Tues|Wed|Thu|Thurs|Fri"
_ABSTATE = (
    "Ala|Ariz|[A]z|[A]rk|Calif|Colo|Conn|Ct|Dak|[D]el|Fla|Ga|[I]ll|Ind|Kans?|Ky|[L]a|[M]ass|Md|Mich|Minn|[M]iss|Mo|"
    "Mont|Neb|Nev|Okla|[O]re|[P]a|Penn|Tenn|[T]ex|Va|Vt|[W]ash|Wisc?|Wyo"
)
_ABCOMP = "Inc|Cos?|Corp|Pp?t[ye]s?|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys"
_ABNUM = "tel|est|ext|sq"
_ABPTIT = "Jr|Sr|Bros|(Ed/Ph)\\.D|Blvd|Rd|Esq"
_ABBREV1 = _words(f"{_ABMONTH}|{_ABDAYS}|{_ABSTATE}|{_ABCOMP}|{_ABNUM}|{_ABPTIT}|etc|al|seq|Bldg") + "\\."
_ABTITLE = (
    "Mr|Mrs|Ms|[M]iss|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|Cpl|Pvt|Capt|Ste?|Ave|"
    "Pres|Lieut|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|Mt|Ft|Adj|Adv|Asst|Assoc|Ens|Insp|Mlle|Mme|Msgr|Sfc"
)
_ABCOMP2 = "Invt|Elec|Natl|M[ft]g|Dept"
_ABBREV4 = (_words(f"{_ABTITLE}|vs|Alex|Wm|Jos|Cie|a\\.k\\.a|cf|TREAS|Ph|{_ABCOMP2}"), *_ACRO)
_ABBREV3 = _words("ca|figs?|prop|nos?|art|bldg|pp|op") + "\\."
_PHONE = (
    (
        "(?:\\([0-9]{2,3}\\)[ \u00a0]?|(?:\\+\\+?)?(?:[0-9]{2,4}[\\- \u00a0])?[0-9]{2,4}[\\- \u00a0])"
        "[0-9]{3,4}[\\- \u00a0]?[0-9]{3,5}"
    ),
    "(?:(?:\\+\\+?)?[0-9]{2,4}\\.)?[0-9]{2,4}\\.[0-9]{3,4}\\.[0-9]{3,5}",
)
_LDOTS = ("\\.{3,5}", "(?:\\.[ \u00a0]){2,4}\\.", "[\u0085\u2026]")
_ASTS = ("\\*+", "(?:\\\\\\*){1,3}")
_INSENTP = "[,;:\u3001]"
_QUOTES = (
    _APOS,
    "''",
    "[`\u2018\u2019\u201a\u201b\u201c\u201d\u0091\u0092\u0093\u0094\u201e\u201f\u2039\u203a\u00ab\u00bb]{1,2}",
)
_DBLQUOT = f'(?:"|{_ci("&quot;")})'
_TBSPEC = (
    "-" + _words("RRB|LRB|RCB|LCB|RSB|LSB") + "-",
    _ci("C.D.s"),
    _ci("pro-"),
    _ci("anti-"),
    f"{_ci('S')}(?:&|{_SPAMP}){_ci('P-500')}",
    f"{_ci('S')}(?:&|{_SPAMP}){_ci('Ls')}",
    f"{_ci('Cap')}{_APOS}{_ci('n')}",
    f"{_ci('c')}{_APOS}{_ci('est')}",
)
_TBSPEC2 = f"{_APOS}[0-9][0-9]"
_SMILEY = "[<>]?[:;=][\\-o*']?[()DPdpO\\\\{@|\\[\\]]"
_ASIANSMILEY = (
    "[\\^x=~<>]\\.\\[\\^x=~<>]",
    "[\\-\\^x=~<>']_[\\-\\^x=~<>']",
    "\\([\\-\\^x=~<>'][_.]?[\\-\\^x=~<>']\\)",
    "\\([\\^x=~<>']-[\\^x=~<>'`]\\)",
)
_MISCSYMBOL = (
    "[+%&~\\^|\\\\\u00a6\u00a7\u00a8\u00a9\u00ac\u00ae\u00af\u00b0-\u00b3\u00b4-\u00ba\u00d7\u00f7\u0387\u05be"
    "\u05c0\u05c3\u05c6\u05f3\u05f4\u0600-\u0603\u0606-\u060a\u060c\u0614\u061b\u061e\u066a\u066d\u0703-\u070d"
    "\u07f6\u07f7\u07f8\u0964\u0965\u0e4f\u1fbd\u2016\u2017\u2020-\u2023\u2030-\u2038\u203b\u203e-\u2042\u2044"
    "\u207a-\u207f\u208a-\u208e\u2100-\u214f\u2190-\u21ff\u2200-\u2bff\u3012\u30fb\uff01-\uff0f\uff1a-\uff20"
    "\uff3b-\uff40\uff5b-\uff65]"
)
_ACRONYM_FOLLOWERS = (
    "[A]bout|[A]ccording|[A]dditionally|[A]fter|[A]n|[A]|[A]s|[A]t|[B]ut|[E]arlier|[H]e|[H]er|[H]ere|[H]owever|[I]f|"
    "[I]n|[I]t|[L]ast|[M]any|[M]ore|[M]r\\.|[M]s\\.|[N]ow|[O]nce|[O]ne|[O]ther|[O]ur|[S]he|[S]ince|[S]o|[S]ome|"
    "[S]uch|[T]hat|[T]he|[T]heir|[T]hen|[T]here|[T]hese|[T]hey|[T]his|[W]e|[W]hen|[W]hile|[W]hat|[Y]et|[Y]ou"
)

NEWLINE_TOKEN = "*NL*"
# pycocoevalcap tokenizer/ptbtokenizer.py: tokens dropped after tokenising (compared after lowercasing, so the
# upper-case bracket tokens never match).
PUNCTUATIONS = (
    "''",
    "'",
    "``",
    "`",
    "-LRB-",
    "-RRB-",
    "-LCB-",
    "-RCB-",
    ".",
    "?",
    "!",
    ",",
    ":",
    "-",
    "--",
    "...",
    ";",
)

_SINGLE_QUOTE = re.compile("&apos;|'")
_DOUBLE_QUOTE = re.compile('"|&quot;')
_LEFT_SINGLE = re.compile("[\u0091\u2018\u201b\u2039]")
_RIGHT_SINGLE = re.compile("[\u0092\u2019\u203a]")
_LEFT_DOUBLE = re.compile("[\u0093\u201c\u00ab]")
_RIGHT_DOUBLE = re.compile("[\u0094\u201d\u00bb]")
_AMP = re.compile("(?i:&amp;)")
_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}


def _latex_quotes(token: str, probably_left: bool) -> str:
    if probably_left:
        token = _DOUBLE_QUOTE.sub("``", _SINGLE_QUOTE.sub("`", token))
    else:
        token = _DOUBLE_QUOTE.sub("''", _SINGLE_QUOTE.sub("'", token))
    token = _RIGHT_SINGLE.sub("'", _LEFT_SINGLE.sub("`", token))
    return _RIGHT_DOUBLE.sub("''", _LEFT_DOUBLE.sub("``", token))


def _remove_soft_hyphens(token: str) -> str:
    stripped = token.replace("\u00ad", "")
    return stripped if stripped or not token else "-"


def _parens(token: str) -> str:
    return token.replace("(", "-LRB-").replace(")", "-RRB-")


def _currency(token: str) -> str:
    token = token.replace("\u00a2", "cents").replace("\u00a3", "#")
    return re.sub("[\u0080\u00a4\u20a0\u20ac]", "$", token)


# Each rule: (alternative main patterns, trailing context or None, action). An action maps the matched main text to
# (token or None, characters consumed); consuming fewer characters than matched is JFlex's yypushback.
def _keep(text):
    return text, len(text)


def _push_back(count):
    return lambda text: (text[:-count], len(text) - count)


def _const(token):
    return lambda text: (token, len(text))


def _skip(text):
    return None, len(text)


def _redup(text):  # "Inc." then "." again (the period is pushed back)
    return text, len(text) - 1


def _acronym(text):  # "I." -> "I" then "."; "U.S." -> "U.S." then "."
    return (text[:-1], 1) if len(text) == 2 else (text, len(text) - 1)


def _quotes(probably_left):
    return lambda text: (_latex_quotes(text, probably_left), len(text))


_RULES = [
    ((_ci("c") + "[+][+]",), None, _keep),
    ((f"(?:{_ci('c')}|{_ci('f')})#",), None, _keep),
    ((_ci("cannot"),), None, _push_back(3)),
    ((_ci("'twas"),), None, _push_back(3)),
    ((_ci("'tis"),), None, _push_back(2)),
    ((_words("gonna|gotta|lemme|gimme|wanna"),), None, _push_back(2)),
    ((_SGML,), None, lambda text: (text.replace(" ", "\u00a0"), len(text))),
    ((_SPMDASH,), None, _const("--")),
    ((_SPAMP,), None, lambda text: (_AMP.sub("&", text), len(text))),
    ((_SPPUNC,), None, _keep),
    ((_WORD,), _REDAUX, lambda text: (_remove_soft_hyphens(text), len(text))),
    ((_SWORD,), _SREDAUX, lambda text: (_remove_soft_hyphens(text), len(text))),
    ((_WORD,), None, lambda text: (_remove_soft_hyphens(text), len(text))),
    (_APOWORD, None, _keep),
    ((_APOWORD2,), _L, _keep),
    ((_FULLURL,), None, _keep),
    (_LIKELYURL, None, _keep),
    ((_EMAIL,), None, _keep),
    ((_TWITTER,), None, _keep),
    ((_REDAUX,), "[^A-Za-z]", _quotes(False)),
    ((_SREDAUX,), "[^A-Za-z]", _quotes(False)),
    ((_DATE,), None, _keep),
    ((_NUMBER,), None, lambda text: (_remove_soft_hyphens(text), len(text))),
    ((_SUBSUPNUM,), None, _keep),
    ((_FRAC,), None, lambda text: (text.replace(" ", "\u00a0"), len(text))),
    ((_FRAC2,), None, lambda text: (_FRACTIONS.get(text, text), len(text))),
    (_TBSPEC, None, lambda text: (_AMP.sub("&", text), len(text))),
    ((_THING3,), None, _keep),
    ((_DOLSIGN,), None, _keep),
    ((_DOLSIGN2,), None, lambda text: (_currency(text), len(text))),
    (
        tuple(f"{acro}\\." for acro in _ACRO),
        f"{_SPACENL}+(?:{_words(_ACRONYM_FOLLOWERS)}|{_SGML}){_SPACENL}",
        _acronym,
    ),
    ((_ABBREV3,), f"{_SPACENL}?{_D}", _keep),
    ((f"(?:{_ci('pt')}[eyEY]|{_ci('co')})\\.",), f"{_SPACE}(?:{_ci('ltd')}|{_ci('lim')})", _keep),
    ((_ABBREV1,), _SENTEND, _redup),
    ((_ABBREV1,), "[\\s\\S][\\s\\S]", _keep),
    ((_ABBREV1,), None, _redup),
    (tuple(f"{alternative}\\." for alternative in _ABBREV4), None, _keep),
    (_ABBREV4, _SPACE, _keep),
    (_ACRO, _SPACENL, _keep),
    ((_TBSPEC2,), _SPACENL, _keep),
    ((_FILENAME,), f"(?:{_SPACENL}|[.?!,])", _keep),
    ((f"{_WORD}\\.",), _INSENTP, lambda text: (_remove_soft_hyphens(text), len(text))),
    (_PHONE, None, lambda text: (_parens(text.replace(" ", "\u00a0")), len(text))),
    ((_DBLQUOT,), "[A-Za-z0-9$]", _quotes(True)),
    ((_DBLQUOT,), None, _quotes(False)),
    (("\x7f",), None, _skip),
    ((f"(?:<|{_ci('&lt;')})",), None, _const("<")),
    ((f"(?:>|{_ci('&gt;')})",), None, _const(">")),
    ((_SMILEY,), "[^A-Za-z0-9]", lambda text: (_parens(text), len(text))),
    (_ASIANSMILEY, None, lambda text: (_parens(text), len(text))),
    (("\\{",), None, _const("-LCB-")),
    (("\\}",), None, _const("-RCB-")),
    (("\\[",), None, _const("-LSB-")),
    (("\\]",), None, _const("-RSB-")),
    (("\\(",), None, _const("-LRB-")),
    (("\\)",), None, _const("-RRB-")),
    (("-+",), None, lambda text: ("--" if 3 <= len(text) <= 4 else text, len(text))),
    (_LDOTS, None, _const("...")),
    (("@+", "#+", "_+"), None, _keep),
    (_ASTS, None, _keep),
    ((_INSENTP,), None, _keep),
    (("[?!]+",), None, _keep),
    (("[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002]",), None, _keep),
    (("=",), None, _keep),
    (("/",), None, _keep),
    ((f"{_HTHING}\\.",), _INSENTP, lambda text: (_remove_soft_hyphens(text), len(text))),
    ((_HTHING,), None, lambda text: (_remove_soft_hyphens(text), len(text))),
    ((f"{_THING}\\.",), _INSENTP, _keep),
    ((_THING,), None, _keep),
    ((f"{_THINGA}\\.",), _INSENTP, lambda text: (_AMP.sub("&", text), len(text))),
    ((_THINGA,), None, lambda text: (_AMP.sub("&", text), len(text))),
    (("'",), "[A-Za-z][^ \t\n\r\u00a0]", _quotes(True)),
    ((_REDAUX,), None, _quotes(False)),
    ((_SREDAUX,), None, _quotes(False)),
    (_QUOTES, None, _quotes(False)),
    (("<<", ">>"), None, _keep),
    ((_MISCSYMBOL,), None, _keep),
    (("\x00", f"{_SPACE}+", "[\u200b\u200e\u200f\ufeff]"), None, _skip),
    ((_NEWLINE,), None, _const(NEWLINE_TOKEN)),
    ((_ci("&nbsp;"),), None, _skip),
]
_COMPILED_RULES = [
    ([re.compile(f"(?P<main>{main})" + (f"(?:{trail})" if trail else "")) for main in mains], action)
    for mains, trail, action in _RULES
]
# Shortcuts for the commonest caption tokens, each taken only where no rule can match more or differently (the tests
# check on random text that they change nothing): an ASCII word followed by a space, a newline, the end, or by
# ",;:)" / a sentence-final "." in a chunk without "@" (e-mail) or "-" (hyphenated things); and single marks whose
# rule is certain from the next character.
_WORD_RUN = re.compile(r"[A-Za-z]+")
_SPACES = re.compile(_SPACE + "+")
_ASSIMILATIONS = {"cannot", "gonna", "gotta", "lemme", "gimme", "wanna"}
# Every word that some abbreviation rule can take with its period (lowercased; a superset is safe).
_ABBREVIATION_WORDS = {
    variant.lower()
    for spec in (_ABMONTH, _ABDAYS, _ABSTATE, _ABCOMP, _ABNUM, _ABPTIT, _ABTITLE, _ABCOMP2)
    for word in re.sub(r"\[(\w)\]", r"\1", spec).split("|")
    for variant in (word.replace("?", ""), re.sub(r".\?", "", word))  # "Drs?" -> "drs", "dr"
} | {"etc", "al", "seq", "bldg", "vs", "alex", "wm", "jos", "cie", "cf", "treas", "ph", "ca", "fig", "figs", "prop",
     "no", "nos", "art", "pp", "op", "co", "pte", "pty", "ppt", "ppte", "ppty", "pts", "ptes", "ptys", "ppts",
     "pptes", "pptys", "mfg", "mtg", "ed"}  # fmt: skip
_SPACE_OR_END = (" ", "\n", "")


def _shortcut(text: str, position: int) -> tuple[str | None, int] | None:
    """(token, consumed) when the token at `position` is certain without trying every rule, else None."""
    char = text[position]
    if char == " ":  # only the SPACES rule starts with a space
        return None, len(_SPACES.match(text, position).group())
    if char == "\n":
        return NEWLINE_TOKEN, 1
    following = text[position + 1 : position + 2]
    if char.isascii() and char.isalpha():
        run = _WORD_RUN.match(text, position).group()
        if run.lower() in _ASSIMILATIONS:
            return None
        after = text[position + len(run) : position + len(run) + 1]
        if after in _SPACE_OR_END:
            return run, len(run)
        chunk_end = min(
            (text.find(sep, position) for sep in " \n" if text.find(sep, position) != -1), default=len(text)
        )
        chunk = text[position:chunk_end]
        if "@" in chunk:
            return None
        # ":" only before a space ("http:" may start a URL), "," only without a later "-" (HTHING "a,b-c").
        if after == ")" or (
            after in ";:" and text[position + len(run) + 1 : position + len(run) + 2] in _SPACE_OR_END
        ):
            return run, len(run)
        if after == "," and "-" not in chunk:
            return run, len(run)
        if after == "." and chunk == run + "." and len(run) >= 2 and run.lower() not in _ABBREVIATION_WORDS:
            return run, len(run)
        return None
    if char == ")":
        return "-RRB-", 1
    if char == "," and not following.isdigit():
        return ",", 1
    if char in "?!":
        run = re.match(r"[?!]+", text[position:]).group()
        return run, len(run)
    if char == '"':
        return ("``" if re.match("[A-Za-z0-9$]", following) else "''"), 1
    if (
        char == "("
        and following
        and (following == " " or (following.isascii() and following.isalpha() and following != "x"))
    ):
        return "-LRB-", 1
    if char in ";:" and following in _SPACE_OR_END:
        return char, 1
    if char == "." and (
        following in ("\n", "") or (following == " " and text[position + 2 : position + 3] not in ". \u00a0")
    ):
        return ".", 1
    return None


def ptb_lex(text: str, shortcuts: bool = True) -> list[str]:
    """The tokens PTBLexer (CoreNLP 3.4.1, `-preserveLines`) produces for `text`, before lowercasing.

    Newlines become `NEWLINE_TOKEN`; untokenizable characters are deleted (the lexer's default). `shortcuts=False`
    tries every rule at every position (slower; the result is the same).
    """
    tokens, position, length = [], 0, len(text)
    while position < length:
        found = _shortcut(text, position) if shortcuts else None
        if found is None:
            best_total, best = 0, None
            for patterns, action in _COMPILED_RULES:
                for pattern in patterns:
                    match = pattern.match(text, position)
                    # Longest match wins, counting the trailing context; the earlier rule wins a tie.
                    if match and match.end() - position > best_total:
                        best_total, best = match.end() - position, (match.group("main"), action)
            if best is None:  # JFlex's "." rule: an untokenizable character, deleted
                position += 1
                continue
            found = best[1](best[0])
        token, consumed = found
        if token is not None:
            tokens.append(token)
        position += consumed
    return tokens


def ptb_tokenize(captions: list[str]) -> list[str]:
    """pycocoevalcap's `PTBTokenizer.tokenize` for one side (all references, or all predictions), in order.

    The captions (their newlines made spaces) are joined by newlines and lexed as one text; each output line is
    lowercased token by token (Java's `toLowerCase`), split on single spaces and stripped of `PUNCTUATIONS`. As in
    pycocoevalcap, a caption containing another line break (\\r, U+2028, ...) ends its line early and shifts the lines
    of the captions after it.
    """
    lines, current = [], []
    for token in ptb_lex("\n".join(caption.replace("\n", " ") for caption in captions)):
        if token == NEWLINE_TOKEN:
            lines.append(" ".join(current))
            current = []
        else:
            current.append(token.lower())
    lines.append(" ".join(current))
    return [" ".join(word for word in line.rstrip().split(" ") if word not in PUNCTUATIONS) for line in lines][
        : len(captions)
    ]


# ======================================================================================================================
# CiderScorer (pycocoevalcap cider/cider_scorer.py)
# ======================================================================================================================


def precook(sentence: str, n: int = 4) -> dict[tuple[str, ...], int]:
    """Counts of the 1..n-grams of a tokenised sentence (split on whitespace), in pycocoevalcap's insertion order."""
    words = sentence.split()
    counts: dict[tuple[str, ...], int] = {}
    for order in range(1, n + 1):
        for start in range(len(words) - order + 1):
            ngram = tuple(words[start : start + order])
            counts[ngram] = counts.get(ngram, 0) + 1
    return counts


def cider_d(candidates: list[str], references: list[list[str]], n: int = 4, sigma: float = 6.0) -> list[float]:
    """CIDEr-D of each image from tokenised captions, following CiderScorer's computation step by step."""
    test_counts = [precook(candidate, n) for candidate in candidates]
    ref_counts = [[precook(reference, n) for reference in refs] for refs in references]
    document_frequency: dict[tuple[str, ...], float] = {}
    for refs in ref_counts:
        for ngram in {ngram for ref in refs for ngram in ref}:
            document_frequency[ngram] = document_frequency.get(ngram, 0.0) + 1
    ref_len = math.log(float(len(ref_counts)))

    def counts_to_vector(counts):
        vectors = [{} for _ in range(n)]
        norms = [0.0] * n
        length = 0
        for ngram, term_frequency in counts.items():
            df = math.log(max(1.0, document_frequency.get(ngram, 0.0)))
            order = len(ngram) - 1
            vectors[order][ngram] = float(term_frequency) * (ref_len - df)
            norms[order] += pow(vectors[order][ngram], 2)
            if order == 1:
                length += term_frequency
        return vectors, [math.sqrt(norm) for norm in norms], length

    def similarity(hyp, ref):
        (vec_hyp, norm_hyp, length_hyp), (vec_ref, norm_ref, length_ref) = hyp, ref
        delta = float(length_hyp - length_ref)
        values = [0.0] * n
        for order in range(n):
            for ngram in vec_hyp[order]:
                values[order] += min(vec_hyp[order][ngram], vec_ref[order].get(ngram, 0.0)) * vec_ref[order].get(
                    ngram, 0.0
                )
            if norm_hyp[order] != 0 and norm_ref[order] != 0:
                values[order] /= norm_hyp[order] * norm_ref[order]
            values[order] *= math.e ** (-(delta**2) / (2 * sigma**2))
        return values

    scores = []
    for test, refs in zip(test_counts, ref_counts):
        hyp = counts_to_vector(test)
        summed = [0.0] * n
        for ref in refs:
            summed = [total + value for total, value in zip(summed, similarity(hyp, counts_to_vector(ref)))]
        score = sum(summed) / n
        score /= len(refs)
        scores.append(score * 10.0)
    return scores


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Cider(evaluate.Metric):
    """CIDEr-D with pycocoevalcap's PTBTokenizer rules in Python."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
            codebase_urls=["https://github.com/tylin/coco-caption", "https://github.com/salaniz/pycocoevalcap"],
            reference_urls=["https://arxiv.org/abs/1411.5726"],
        )

    def _compute(self, predictions, references, n: int = 4, sigma: float = 6.0, tokenize: bool = True):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r} must be a positive integer (CIDEr-D uses 4).")
        if not sigma > 0:
            raise ValueError(f"sigma={sigma!r} must be positive (CIDEr-D uses 6.0).")
        for index, (prediction, refs) in enumerate(zip(predictions, references)):
            if not isinstance(prediction, str):
                raise TypeError(f"predictions[{index}] is {prediction!r}; pass the caption text.")
            if len(refs) == 0:
                raise ValueError(f"references[{index}] is empty; every image needs at least one reference caption.")
        if tokenize:
            flat = ptb_tokenize([ref for refs in references for ref in refs])
            candidates = ptb_tokenize(list(predictions))
            tokenized_refs, start = [], 0
            for refs in references:
                tokenized_refs.append(flat[start : start + len(refs)])
                start += len(refs)
        else:
            candidates, tokenized_refs = list(predictions), [list(refs) for refs in references]
        scores = cider_d(candidates, tokenized_refs, n=n, sigma=float(sigma))
        return {"cider": sum(scores) / len(scores) if scores else 0.0, "per_question": scores}
