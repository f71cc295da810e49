"""A built-in corpus of short reviews with a known sentiment, and the gold sentiment judge that grades it.

`generate_reviews` writes product, movie and restaurant reviews from a seeded grammar: subjects,
aspects, adjectives with a polarity and a strength, intensifiers and downtoners, negation ("not bad at
all"), contrast ("..., but ..."), openers, closers and star ratings. Each review's sentiment is computed
from the choices the generator made, not by reading the text back, and `gold_sentiment` is an
independent lexicon scorer over the same vocabulary with the same rules, so that it (a) agrees with the
generator on generated reviews and (b) works on ANY text, such as a policy's completions during RL.

The rules, shared by both sides:
- a sentiment term (adjective, verb, noun or phrase) has a value in [-1, 1];
- intensifiers in the 3 tokens before a term multiply it ("very" 1.3, "slightly" 0.6, ...);
- a negator in those 3 tokens flips and damps it (x -0.5), "at all" right after a negated term x 1.3;
- in a sentence with "but"/"however", terms before the pivot weigh 0.5 and after it 1.5; an
  "Although ..., ..." sentence weighs its first clause 0.5 and the rest 1.5;
- "4 out of 5", "7/10", "two stars" ratings count with weight 2;
- the text's sentiment is the weighted mean of its clipped term values (0.0 when there are none).

Example:
    >>> reviews = generate_reviews(3, seed=0, sentiment="positive")
    >>> all(r.label == "positive" for r in reviews)
    True
    >>> gold_sentiment("The soup was not bad at all.") > 0 > gold_sentiment("Terrible service.")
    True
    >>> in_vocabulary_rate("The soup was tasty.")
    1.0
"""

from __future__ import annotations

import bisect
import random
import re
from dataclasses import dataclass
from functools import lru_cache

from rlfl.data import Document

NEUTRAL_BAND = 0.15  # |sentiment| below this is labelled "neutral"
NEGATION_FACTOR = -0.5
AT_ALL_FACTOR = 1.3
RATING_WEIGHT = 2.0
WINDOW = 3

# ------------------------------------------------------------------------------------------ lexicon
# Adjectives that fit any aspect, then per-domain ones (the generator draws from generic + its domain;
# the scorer knows them all).


def _table(spec: str) -> dict[str, float]:
    return {w: float(v) for w, v in (item.split(":") for item in spec.split())}


GENERIC_ADJECTIVES = _table(
    "good:0.5 great:0.75 excellent:0.9 amazing:0.9 wonderful:0.85 fantastic:0.9 superb:0.9 "
    "outstanding:0.95 brilliant:0.85 terrific:0.85 lovely:0.65 delightful:0.75 pleasant:0.45 nice:0.45 "
    "solid:0.4 decent:0.3 fine:0.25 enjoyable:0.6 impressive:0.7 charming:0.55 satisfying:0.55 "
    "flawless:0.9 perfect:0.95 beautiful:0.7 stunning:0.85 fun:0.55 polished:0.5 "
    "bad:-0.5 terrible:-0.9 awful:-0.9 horrible:-0.9 dreadful:-0.85 atrocious:-0.95 poor:-0.6 "
    "disappointing:-0.6 mediocre:-0.35 bland:-0.4 boring:-0.55 dull:-0.45 weak:-0.4 annoying:-0.5 "
    "unpleasant:-0.5 sloppy:-0.5 frustrating:-0.6 messy:-0.4 lousy:-0.7 subpar:-0.5 "
    "underwhelming:-0.45 pathetic:-0.85 confusing:-0.45 pointless:-0.6")
DOMAIN_ADJECTIVES = {
    "product": _table("sturdy:0.45 reliable:0.5 intuitive:0.5 comfortable:0.5 sleek:0.45 handy:0.45 "
                      "flimsy:-0.55 unreliable:-0.6 clunky:-0.45 useless:-0.8 broken:-0.7 "
                      "uncomfortable:-0.5 noisy:-0.35 overpriced:-0.5"),
    "movie": _table("gripping:0.65 clever:0.55 memorable:0.6 moving:0.6 hilarious:0.7 touching:0.6 "
                    "forgettable:-0.4 predictable:-0.3 tedious:-0.55 unwatchable:-0.9 incoherent:-0.6 "
                    "lifeless:-0.55 cheesy:-0.35 overlong:-0.4"),
    "restaurant": _table("tasty:0.6 delicious:0.8 friendly:0.55 cozy:0.5 spotless:0.6 generous:0.5 "
                         "attentive:0.55 greasy:-0.4 stale:-0.5 soggy:-0.5 overcooked:-0.45 inedible:-0.9 "
                         "rude:-0.7 dirty:-0.6 cramped:-0.4 overpriced:-0.5"),
}
VERBS = {  # past tense -> (base form, value)
    "loved": ("love", 0.8), "adored": ("adore", 0.9), "enjoyed": ("enjoy", 0.6), "liked": ("like", 0.5),
    "appreciated": ("appreciate", 0.45), "hated": ("hate", -0.85), "disliked": ("dislike", -0.5),
    "despised": ("despise", -0.9),
}
NOUNS = _table("gem:0.7 masterpiece:0.9 treat:0.55 joy:0.7 delight:0.75 winner:0.6 bargain:0.55 "
               "pleasure:0.6 disappointment:-0.65 disaster:-0.85 mess:-0.6 waste:-0.8 letdown:-0.6 "
               "ripoff:-0.75 nightmare:-0.85 failure:-0.7 problems:-0.35 problem:-0.35")
OTHER_TERMS = _table("best:0.9 worst:-1.0 better:0.45 worse:-0.5 worth:0.5 recommend:0.6 "
                     "recommended:0.6 avoid:-0.7 loves:0.8 enjoys:0.6 hates:-0.85 likes:0.5 regret:-0.6 "
                     "regretted:-0.6")
PHRASES = {tuple(k.split("_")): v for k, v in _table(
    "could_have_been_better:-0.4 could_have_been_worse:0.2 worth_every_penny:0.8 nothing_special:-0.3 "
    "fell_apart:-0.6 stopped_working:-0.7 blew_me_away:0.85 let_me_down:-0.6 hit_the_spot:0.6 "
    "top_notch:0.85 went_downhill:-0.55 never_again:-0.7 thumbs_up:0.7 thumbs_down:-0.7 "
    "save_your_money:-0.6 well_spent:0.65 be_back:0.55 coming_back:0.5 going_back:0.5 "
    "buy_again:0.6 order_again:0.6 watch_it_again:0.6 breath_of_fresh_air:0.7").items()}
INTENSIFIERS = _table("very:1.3 really:1.3 extremely:1.5 incredibly:1.5 truly:1.4 absolutely:1.5 so:1.3 "
                      "super:1.3 quite:1.1 pretty:1.1 fairly:0.9 rather:0.9 somewhat:0.7 slightly:0.6 "
                      "highly:1.4 genuinely:1.3 remarkably:1.4 mildly:0.6 totally:1.4 utterly:1.5 real:1.2 "
                      "total:1.2 complete:1.2 too:1.2")
MULTIWORD_INTENSIFIERS = {("a", "bit"): 0.7, ("kind", "of"): 0.7, ("sort", "of"): 0.7, ("a", "little"): 0.7}
NEGATORS = frozenset("not no never hardly barely nothing neither nor without cannot".split())
PIVOTS = frozenset(("but", "however"))
CONCESSIVES = frozenset(("although", "though"))
# "like" is also a preposition ("looks like a toy"): only count it after one of these words.
LIKE_CONTEXT = frozenset("i we they you he she really truly did do does".split())

TERMS: dict[str, float] = {**GENERIC_ADJECTIVES, **{w: v for t in DOMAIN_ADJECTIVES.values()
                                                     for w, v in t.items()},
                           **{p: v for p, (_, v) in VERBS.items()},
                           **{b: v for b, v in VERBS.values()}, **NOUNS, **OTHER_TERMS}
_MAX_PHRASE = max(len(p) for p in PHRASES)

# --------------------------------------------------------------------------------------- the judge
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+(?:\.\d+)?|[.!?;,:]")
_SENTENCE_END = frozenset(".!?;:")
_NUMBER_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_RATING_OF = re.compile(r"\b(\d+(?:\.\d+)?)\s*(?:/|out\s+of)\s*(\d+)\b")
_RATING_STARS = re.compile(r"\b(\d(?:\.5)?|one|two|three|four|five)[\s-]+stars?\b")


def _rating_value(value: float, scale: float) -> float | None:
    if scale not in (4, 5, 10, 100) or not 0 <= value <= scale:
        return None
    low = 0 if scale == 100 else 1
    return max(-1.0, min(1.0, 2 * (value - low) / (scale - low) - 1))


def _ratings(text: str) -> tuple[list[float], str]:
    """Rating values found in lower-cased text, and the text with them blanked out."""
    found: list[float] = []

    def of(m: re.Match) -> str:
        v = _rating_value(float(m.group(1)), float(m.group(2)))
        if v is None:
            return m.group(0)
        found.append(v)
        return " , "

    def stars(m: re.Match) -> str:
        v = _rating_value(float(_NUMBER_WORDS.get(m.group(1), m.group(1))), 5)
        if v is None:
            return m.group(0)
        found.append(v)
        return " , "

    text = _RATING_OF.sub(of, text)
    text = _RATING_STARS.sub(stars, text)
    return found, text


def _is_negator(tok: str) -> bool:
    return tok in NEGATORS or tok.endswith("n't")


def _sentence_terms(tokens: list[str]) -> list[tuple[float, float]]:
    """(value, weight) of every sentiment term in one sentence's tokens."""
    spans: list[tuple[int, int, float]] = []  # start, end (exclusive), base value
    i = 0
    while i < len(tokens):
        for n in range(min(_MAX_PHRASE, len(tokens) - i), 1, -1):
            if tuple(tokens[i:i + n]) in PHRASES:
                spans.append((i, i + n, PHRASES[tuple(tokens[i:i + n])]))
                i += n
                break
        else:
            tok = tokens[i]
            if tok in TERMS and (tok != "like" or (i and (tokens[i - 1] in LIKE_CONTEXT
                                                          or _is_negator(tokens[i - 1])))):
                spans.append((i, i + 1, TERMS[tok]))
            i += 1
    pivot = next((k for k, t in enumerate(tokens) if t in PIVOTS), None)
    concessive_end = None
    if tokens and (tokens[0] in CONCESSIVES or tokens[:2] == ["even", "though"]):
        concessive_end = next((k for k, t in enumerate(tokens) if t == ","), None)
    out = []
    prev_end = 0
    for start, end, value in spans:
        factor, negated = 1.0, False
        for k in range(start - 1, max(prev_end, start - WINDOW) - 1, -1):
            tok = tokens[k]
            if tok == "," or tok in PIVOTS:
                break
            if _is_negator(tok):
                negated = True
            elif tok in INTENSIFIERS:
                factor *= INTENSIFIERS[tok]
            elif k and (tokens[k - 1], tok) in MULTIWORD_INTENSIFIERS:
                factor *= MULTIWORD_INTENSIFIERS[(tokens[k - 1], tok)]
        value *= factor
        if negated:
            value *= NEGATION_FACTOR
            if tokens[end:end + 2] == ["at", "all"]:
                value *= AT_ALL_FACTOR
        weight = 1.0
        if pivot is not None:
            weight = 0.5 if start < pivot else 1.5
        elif concessive_end is not None:
            weight = 0.5 if start < concessive_end else 1.5
        out.append((max(-1.0, min(1.0, value)), weight))
        prev_end = end
    return out


def gold_sentiment(text: str) -> float:
    """Sentiment of any text in [-1, 1] by the synthetic corpus's lexicon and rules (0.0: none found).

    Example:
        >>> round(gold_sentiment("The plot was very good, but the ending was awful."), 4)  # 0.5*0.65 - 1.5*0.9
        -0.5125
        >>> gold_sentiment("The meeting is at noon.")
        0.0
    """
    lowered = text.lower().replace("\u2019", "'")
    ratings, lowered = _ratings(lowered)
    scored = [(v, RATING_WEIGHT) for v in ratings]
    sentence: list[str] = []
    for tok in _TOKEN.findall(lowered) + ["."]:
        if tok in _SENTENCE_END:
            scored.extend(_sentence_terms(sentence))
            sentence = []
        else:
            sentence.append(tok)
    total = sum(w for _, w in scored)
    return sum(v * w for v, w in scored) / total if total else 0.0


def sentiment_label(score: float) -> str:
    """'positive' / 'negative' / 'neutral' for a sentiment score (neutral within ±NEUTRAL_BAND)."""
    return "positive" if score >= NEUTRAL_BAND else "negative" if score <= -NEUTRAL_BAND else "neutral"


# ------------------------------------------------------------------------------------ vocabulary
def _words(spec: str) -> list[str]:
    return [w.strip() for w in spec.split("|")]


# Nouns are (phrase, plural?) so the verb agrees: "the fries were", "the plot was".
def _nouns(spec: str) -> list[tuple[str, bool]]:
    return [(w[:-1], True) if w.endswith("+") else (w, False) for w in _words(spec)]


DOMAINS = {
    "product": {
        "subjects": _nouns("this blender|this vacuum|these headphones+|this laptop|this phone case|this kettle|"
                           "this backpack|these running shoes+|this desk lamp|this air fryer|this keyboard|"
                           "this mattress|this drill|this smartwatch|this tent|this coffee grinder|this monitor|"
                           "this toaster|this speaker|this router|this camera|this office chair|this water "
                           "bottle|this rice cooker|this electric toothbrush|this e-reader|this printer|"
                           "this stand mixer|this suitcase|these earbuds+|this robot mop|this space heater"),
        "aspects": _nouns("battery life|build quality|price|design|sound quality|screen|customer support|setup|"
                          "instructions+|buttons+|packaging|motor|companion app|charging cable|materials+|fit|"
                          "noise level|performance|warranty service|finish|handle|lid|display|power cord|"
                          "carrying case|touch controls+|suction|zipper|cushioning|strap"),
        "openers": _words("I bought {subject} {when}.|I have been using {subject} for {duration}.|"
                          "I got {subject} as a gift {when}.|I ordered {subject} {when} for my {place}.|"
                          "We picked up {subject} {when}.|My {relation} gave me {subject} {when}.|"
                          "I replaced my old one with {subject} {when}."),
        "facts": _words("It comes in {color}.|Shipping took {number} days.|I mostly use it in the {place}.|"
                        "The box included a manual and a spare {part}.|It weighs about {number} pounds.|"
                        "I use it {frequency}.|It arrived in a plain brown box.|The {aspect} is {color}."),
    },
    "movie": {
        "subjects": _nouns("this movie|this film|the sequel|this documentary|this thriller|this comedy|"
                           "this horror flick|this animated feature|this romance|this western|this remake|"
                           "this biopic|this musical|this war drama|the series finale|this indie drama|"
                           "this space opera|this mystery|this heist movie|this period piece|{title}"),
        "aspects": _nouns("acting|plot|soundtrack|pacing|dialogue|cinematography|ending|script|"
                          "special effects+|lead actor|villain|cast|editing|costumes+|humor|visuals+|story|"
                          "twist|characters+|action scenes+|first half|final act|opening scene|"
                          "score|set design|chemistry between the leads|supporting cast"),
        "openers": _words("I watched {subject} {when}.|We saw {subject} at the theater {when}.|"
                          "I caught {subject} on a long flight.|My {relation} and I streamed {subject} {when}.|"
                          "I went to see {subject} {when}.|I rented {subject} {when}."),
        "facts": _words("It runs about {number} minutes.|The story follows a {job} who {plot}.|"
                        "It was shot in {city}.|The director also wrote the script.|"
                        "It is based on a novel from the {decade}.|The film opens in {city}.|"
                        "It is the third film in the series."),
    },
    "restaurant": {
        "subjects": _nouns("this place|this restaurant|this diner|this bistro|this taco truck|this pizzeria|"
                           "this sushi bar|this cafe|this steakhouse|this noodle shop|this bakery|"
                           "this brunch spot|this ramen place|this pub|this vegan spot|this seafood shack|"
                           "this buffet|this tapas bar|this food hall|this dumpling house|{venue}"),
        "aspects": _nouns("food|service|atmosphere|staff+|portions+|prices+|dessert|wine list|pasta|steak|"
                          "tacos+|coffee|bread|waiter|decor|music|menu|seating|burgers+|sushi|soup|fries+|"
                          "curry|pizza|cocktails+|wait time|noodles+|dumplings+|salad|patio|bartender"),
        "openers": _words("We went to {subject} for {occasion}.|I stopped by {subject} for lunch {when}.|"
                          "We had dinner at {subject} {when}.|I took my {relation} to {subject} for "
                          "{occasion}.|We tried {subject} {when}.|A coworker suggested {subject} for "
                          "{occasion}."),
        "facts": _words("We ordered the {dish} and the {dish2}.|The menu changes {frequency}.|"
                        "We waited about {number} minutes for a table.|They take reservations online.|"
                        "It is a short walk from the station.|We sat near the window.|"
                        "They only take cards."),
    },
}
FILL = {
    "when": _words("last week|yesterday|a few days ago|last month|over the weekend|on Friday night|"
                   "two weeks ago|last summer|this spring|on a rainy Sunday"),
    "duration": _words("two weeks|a month|three months|about a year|a few days|six weeks|almost two years"),
    "relation": _words("wife|husband|parents|kids|roommate|friend|coworkers|sister|brother|partner|"
                       "grandmother|in-laws|neighbor|son|daughter"),
    "occasion": _words("a birthday dinner|a quick lunch|date night|our anniversary|a work lunch|brunch|"
                       "a late dinner|a family celebration|a graduation party|takeout"),
    "place": _words("kitchen|office|dorm room|garage|bedroom|studio|apartment|cabin"),
    "color": _words("black|white|silver|navy blue|forest green|matte gray|red|beige"),
    "number": [str(n) for n in (2, 3, 4, 5, 7, 10, 12, 15, 20, 25, 30, 45, 90, 95, 110, 120, 135, 150)],
    "part": _words("filter|cable|brush head|battery|lid|set of screws|charging dock"),
    "frequency": _words("every day|every morning|twice a week|on weekends|every season|once a month"),
    "job": _words("retired detective|young pilot|chef|schoolteacher|astronaut|farmer|journalist|"
                  "boxer|lighthouse keeper|con artist|park ranger|violinist"),
    "plot": _words("returns to a small town|takes one last job|finds a hidden map|tries to reunite a family|"
                   "gets stranded at sea|starts over in a new city|investigates a missing person|"
                   "enters a cooking contest"),
    "city": _words("Lisbon|Chicago|Osaka|Montreal|Cape Town|Oslo|Mexico City|Glasgow|Seoul"),
    "decade": _words("1950s|1970s|1980s|1990s"),
    "dish": _words("roast chicken|mushroom risotto|pad thai|fish tacos|lamb stew|veggie burger|"
                   "shrimp curry|margherita pizza|pork dumplings|tomato soup|steak frites|beet salad"),
    "title": [f"{a} {b}" for a in _words("The Silver|The Paper|Iron|The Crimson|The Hollow|Northern|"
                                          "The Last|Quiet|Glass|Winter") for b in
              _words("Harbor|Orchard|Circuit|Letters|Garden|Frontier|Signal|Kingdom|River|Protocol")],
    "venue": _words("Luigi's|The Copper Pot|Saffron House|Blue Fern|Casa Morena|Golden Dragon|"
                    "The Corner Table|Olive Street Kitchen|Maple and Rye|Harbor Grill|Noodle Lab"),
}
FILL["dish2"] = FILL["dish"]
CLOSERS = {
    "any": _words("Highly recommended.|Would not recommend.|Avoid.|Save your money.|Not worth it.|"
                  "I would recommend it to anyone.|What a letdown.|What a gem.|Honestly, not bad at all.|"
                  "It could have been worse.|Nothing special.|Overall, a real treat.|"
                  "Overall, a total mess.|Two thumbs up.|Thumbs down from me."),
    "product": _words("Would buy again.|Money well spent.|Worth every penny.|Total waste of money.|"
                      "I regret buying it.|It stopped working after a week.|It fell apart in a month."),
    "movie": _words("I'd watch it again.|A total waste of time.|It blew me away.|It let me down.|"
                    "A breath of fresh air."),
    "restaurant": _words("I will definitely be back.|We won't be back.|I'd order again.|Never again.|"
                         "It hit the spot.|It was a pleasure.|It went downhill fast."),
}
DOWNTONERS = frozenset(("a bit", "kind of", "slightly", "somewhat"))
NEGATABLE_COMPLAINTS = frozenset("bad terrible awful horrible boring disappointing bland annoying dull "
                                 "mediocre predictable overpriced noisy greasy cheesy".split())
INTENSIFIER_CHOICES = [("", 1.0)] * 6 + [(w, INTENSIFIERS[w]) for w in _words(
    "very|really|extremely|incredibly|truly|absolutely|so|super|quite|pretty|fairly|rather|somewhat|"
    "slightly|genuinely|remarkably|totally")] + [("a bit", 0.7), ("kind of", 0.7)]


# ------------------------------------------------------------------------------------ generator
@dataclass(frozen=True)
class Review:
    """One synthetic review: text, its gold sentiment in [-1, 1], its label and its domain."""

    text: str
    sentiment: float
    label: str
    domain: str


@lru_cache(maxsize=None)
def _realisations(domain: str) -> tuple[list[tuple[float, str, str, bool]], list[float]]:
    """Every (value, adjective, intensifier, negated) the generator may use in a domain, sorted by value,
    and the values alone (for bisect)."""
    # Only combinations people write: "not very good" and "not bad", but not "not very
    # uncomfortable"; downtoners go with complaints ("a bit bland"), not with "a bit delightful".
    adjectives = GENERIC_ADJECTIVES if domain == "generic" else \
        {**GENERIC_ADJECTIVES, **DOMAIN_ADJECTIVES[domain]}
    out = []
    for adj, base in adjectives.items():
        for word, f in set(INTENSIFIER_CHOICES):
            for negated in (False, True):
                if negated and (word not in ("", "very", "really") or adj == "fine"
                                or (base < 0 and (word or adj not in NEGATABLE_COMPLAINTS))):
                    continue
                if word in DOWNTONERS and base > 0:
                    continue
                v = max(-1.0, min(1.0, base * f * (NEGATION_FACTOR if negated else 1.0)))
                out.append((v, adj, word, negated))
    out.sort()
    return out, [o[0] for o in out]


class _Writer:
    """Builds one review of one subject, keeping the (value, weight) of every sentiment term it writes."""

    def __init__(self, rng: random.Random, domain: str) -> None:
        self.rng, self.domain, self.vocab = rng, domain, DOMAINS[domain]
        self.terms: list[tuple[float, float]] = []
        self.subject = self.noun("subjects")

    def fill(self, template: str, **given: str) -> str:
        def sub(m: re.Match) -> str:
            key = m.group(1)
            if key in given:
                return given[key]
            if key == "aspect":
                return self.rng.choice(self.vocab["aspects"])[0]
            return self.fill(self.rng.choice(FILL[key]))
        return re.sub(r"\{(\w+)\}", sub, template)

    def noun(self, kind: str) -> tuple[str, bool]:
        phrase, plural = self.rng.choice(self.vocab[kind])
        return self.fill(phrase), plural

    def term(self, value: float, weight: float) -> None:
        self.terms.append((max(-1.0, min(1.0, value)), weight))

    def adjective(self, target: float, weight: float, domain: str) -> str:
        """'very good' / 'not bad' / 'not bad at all', its value close to target."""
        options, values = _realisations(domain)
        lo, hi = bisect.bisect_left(values, target - 0.12), bisect.bisect_right(values, target + 0.12)
        if lo == hi:  # nothing that close: the nearest few
            lo, hi = max(0, lo - 4), min(len(values), lo + 4)
        value, adj, word, negated = options[self.rng.randrange(lo, hi)]
        phrase = f"{word} {adj}".strip()
        if negated and not word and value > 0 and self.rng.random() < 0.3:
            value *= AT_ALL_FACTOR
            phrase += " at all"
        self.term(value, weight)
        return ("not " if negated else "") + phrase

    def clause(self, target: float, weight: float, about_subject: bool = False) -> str:
        """One sentiment clause about an aspect (or the subject), without final punctuation."""
        rng = self.rng
        noun, plural = self.subject if about_subject else self.noun("aspects")
        if not about_subject:
            noun = f"the {noun}"
        past = rng.random() < 0.7
        verb = ("were" if plural else "was") if past else ("are" if plural else "is")
        if about_subject or rng.random() < 0.7:
            # The subject ("this tent", "Luigi's") only takes adjectives that fit anything.
            domain = "generic" if about_subject else self.domain
            return f"{noun} {verb} {self.adjective(target, weight, domain)}"
        # "I loved the soundtrack" / "my kids didn't enjoy the soup": a verb whose value is near target.
        who = rng.choice(["I", "we", f"my {rng.choice(FILL['relation'])}"])
        verbs = [(p, v) for p, (_, v) in VERBS.items() if abs(v - target) < 0.35]
        negatable = [(b, v * NEGATION_FACTOR) for b, v in VERBS.values()
                     if v > 0 and abs(v * NEGATION_FACTOR - target) < 0.2]
        if negatable and (not verbs or rng.random() < 0.3):
            base, value = rng.choice(negatable)
            self.term(value, weight)
            negation = rng.choice(("did not", "didn't"))
            return f"{who} {negation} {base} {noun}"
        if not verbs:
            return f"{noun} {verb} {self.adjective(target, weight, self.domain)}"
        past_form, value = rng.choice(verbs)
        word, f = rng.choice([("", 1.0), ("really", 1.3), ("truly", 1.4)] if value > 0 else [("", 1.0)])
        self.term(value * f, weight)
        return f"{who} {word + ' ' if word else ''}{past_form} {noun}"

    def sentence(self, target: float) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.55:
            return _cap(self.clause(target, 1.0)) + "."
        if r < 0.75:
            if rng.random() < 0.3:
                a = self.clause(target, 1.0)
                return _cap(a) + ", and " + self.clause(target, 1.0) + "."
            # Contrast: a milder opposite first clause, then the one that carries the direction.
            a = self.clause(-target * rng.uniform(0.3, 1.0), 0.5)
            if rng.random() < 0.5:
                return _cap(a) + ", but " + self.clause(target, 1.5) + "."
            return "Although " + a + ", " + self.clause(target, 1.5) + "."
        if r < 0.9:
            return _cap(self.clause(target, 1.0, about_subject=True)) + "."
        # "This diner was a real gem." / "These earbuds are a total disaster."
        noun, value = min(((w, v) for w, v in NOUNS.items() if not w.startswith("problem")),
                          key=lambda kv: abs(kv[1] - target) + rng.random() * 0.4)
        word, f = rng.choice([("", 1.0), ("", 1.0), ("real" if value > 0 else "total", 1.2)])
        self.term(value * f, 1.0)
        subject, plural = self.subject
        verb = rng.choice(["are", "were"] if plural else ["is", "was"])
        return _cap(f"{subject} {verb} a {word + ' ' if word else ''}{noun}") + "."

    def rating(self, target: float) -> str:
        rng = self.rng
        scale = rng.choice([5, 5, 10])
        value = round(min(scale, max(1, (target + 1) / 2 * (scale - 1) + 1 + rng.gauss(0, 0.4))))
        self.term(_rating_value(value, scale), RATING_WEIGHT)
        return rng.choice([f"{value} out of {scale}.", f"Rating: {value}/{scale}.",
                           f"I'd give it {value} out of {scale}."] +
                          ([f"{value} stars."] if scale == 5 else []))

    def closer(self, target: float) -> str:
        scored = _closer_values(self.domain)
        near = [c for v, c in scored if abs(v - target) < 0.4] or \
            [min(scored, key=lambda x: abs(x[0] - target))[1]]
        text = self.rng.choice(near)
        self.terms.extend(_phrase_terms(text))
        return text


@lru_cache(maxsize=None)
def _closer_values(domain: str) -> list[tuple[float, str]]:
    return [(gold_sentiment(c), c) for c in CLOSERS["any"] + CLOSERS[domain]]


@lru_cache(maxsize=None)
def _phrase_terms(text: str) -> tuple[tuple[float, float], ...]:
    """The terms of a fixed phrase (a closer): part of the lexicon, so the judge's reading is its value."""
    tokens = _TOKEN.findall(text.lower())
    return tuple(_sentence_terms([t for t in tokens if t not in _SENTENCE_END]))


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


_TARGETS = {"positive": (0.35, 1.0), "negative": (-1.0, -0.35), "neutral": (-0.1, 0.1)}


def _one_review(rng: random.Random, target: float) -> Review:
    domain = rng.choice(sorted(DOMAINS))
    w = _Writer(rng, domain)
    parts = []
    if rng.random() < 0.6:
        parts.append(_cap(w.fill(rng.choice(w.vocab["openers"]), subject=w.subject[0])))
    body = [w.sentence(max(-1.0, min(1.0, target + rng.gauss(0, 0.25))))
            for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.35:
        body.insert(rng.randrange(len(body) + 1), w.fill(rng.choice(w.vocab["facts"])))
    parts.extend(body)
    if rng.random() < 0.3:
        parts.append(w.rating(target))
    if rng.random() < 0.5:
        parts.append(w.closer(target))
    total = sum(weight for _, weight in w.terms)
    sentiment = sum(v * weight for v, weight in w.terms) / total if total else 0.0
    return Review(" ".join(parts), sentiment, sentiment_label(sentiment), domain)


def generate_reviews(n: int, *, seed: int = 0, sentiment: float | str | None = None) -> list[Review]:
    """`n` seeded synthetic reviews; `sentiment` asks for a polarity.

    `sentiment` is None (anything), a target in [-1, 1], or "positive" / "negative" / "neutral" (then
    every review carries that label: reviews that miss it are drawn again).

    Example:
        >>> [r.label for r in generate_reviews(2, seed=1, sentiment=-0.8)]
        ['negative', 'negative']
    """
    if isinstance(sentiment, str) and sentiment not in _TARGETS:
        raise ValueError(f"sentiment={sentiment!r}; use 'positive', 'negative', 'neutral', a number in "
                         "[-1, 1] or None")
    if isinstance(sentiment, (int, float)) and not -1 <= sentiment <= 1:
        raise ValueError(f"sentiment={sentiment} must be in [-1, 1]")
    rng = random.Random(seed)
    reviews = []
    for _ in range(n):
        for _attempt in range(50):
            if sentiment is None:
                target = rng.uniform(-1, 1)
            elif isinstance(sentiment, str):
                target = rng.uniform(*_TARGETS[sentiment])
            else:
                target = float(sentiment)
            review = _one_review(rng, target)
            if not isinstance(sentiment, str) or review.label == sentiment:
                break
        reviews.append(review)
    return reviews


def synthetic_documents(n: int, seed: int = 0, *, sentiment: float | str | None = None) -> list[Document]:
    """`n` synthetic reviews as `Document`s (meta: sentiment, label, domain) for `prepare_corpus`."""
    return [Document(r.text, f"synthetic(seed={seed})", i + 1,
                     {"sentiment": r.sentiment, "label": r.label, "domain": r.domain})
            for i, r in enumerate(generate_reviews(n, seed=seed, sentiment=sentiment))]


# ------------------------------------------------------------------------------ vocabulary check
# Words the generator writes outside its tables (clause glue, negations, ratings).
_GLUE_WORDS = "i we my the a and but although was were is are did didn't not at all rating out of stars give it i'd"
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


@lru_cache(maxsize=None)
def grammar_words() -> frozenset[str]:
    """Every word (lower-cased, letters and apostrophes) the review grammar can write: the words of every
    table the generator draws from plus the glue words of its clauses. Numbers and punctuation are not words.

    Example:
        >>> {"tasty", "didn't", "blender"} <= grammar_words() and "tenjoy" not in grammar_words()
        True
    """
    texts: list[str] = [_GLUE_WORDS, *TERMS, *INTENSIFIERS, *NEGATORS, *PIVOTS, *CONCESSIVES,
                        *(" ".join(p) for p in PHRASES), *(" ".join(p) for p in MULTIWORD_INTENSIFIERS),
                        *(b for b, _ in VERBS.values()), *(w for w, _ in INTENSIFIER_CHOICES)]
    for vocab in DOMAINS.values():
        for entries in vocab.values():
            texts.extend(e[0] if isinstance(e, tuple) else e for e in entries)
    for entries in (*FILL.values(), *CLOSERS.values()):
        texts.extend(entries)
    return frozenset(w for t in texts for w in _WORD.findall(re.sub(r"\{\w+\}", " ", t.lower())))


def words_of(text: str) -> list[str]:
    """The lower-cased words of ``text`` as `in_vocabulary_rate` counts them (letters and apostrophes)."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def in_vocabulary_rate(text: str) -> float:
    """The share of ``text``'s words that the review grammar can write (`grammar_words`); 1.0 for a text with
    no words. Misspellings and made-up words ("tenjoy", "levilainy") count against it: a policy that writes
    English reviews scores ~1.0, one that writes byte soup far less.

    Example:
        >>> in_vocabulary_rate(" the torrible. The"), in_vocabulary_rate("I loved it, 5 out of 5.")
        (0.6666666666666666, 1.0)
    """
    words = words_of(text)
    if not words:
        return 1.0
    vocab = grammar_words()
    return sum(w in vocab for w in words) / len(words)
