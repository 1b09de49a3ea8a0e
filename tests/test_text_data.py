"""The text corpus against hand-cleaned markup, a second reading of the dump, slices of the text
and the reference models refitted with plain Python counters."""

import bz2
import math
import subprocess
import sys
from collections import Counter
from xml.etree import ElementTree

import numpy as np
import pytest
import torch

from mdiff_lite import data
from mdiff_lite.data import TEXT_ALPHABET, TEXT_SPLIT_NAMES, TextCorpus, clean_wikitext


@pytest.fixture(scope="module")
def corpus():
    return TextCorpus()


def windows(text: str, length: int) -> list[str]:
    return [text[i:i + length] for i in range(0, len(text) - length + 1, length)]


# -- clean_wikitext on markup cleaned by hand -------------------------------------------------------


@pytest.mark.parametrize("markup, expected", [
    # links: the label if any, else the target; a suffix glued to a link stays glued
    ("The [[political philosophy]] of [[self-governance|self-governed]] [[cat]]s.",
     "the political philosophy of self governed cats"),
    # templates, nested, and a table inside a template and a template inside a table
    ("Before {{Infobox person|name={{nowrap|X Y}}|born={{birth date|1809|2|12}}}} after.", "before after"),
    ("a {{Box|\n{|\n| {{flag|X}} || cell\n|}\n}} b", "a b"),
    ("A\n{| class=\"wikitable\"\n|-\n! Year !! Value\n|-\n| {{flag|X}} || 1\n|-\n|\n{|\n| inner\n|}\n|}\nB", "a b"),
    # footnotes, paired and self-closing, with markup inside
    ('Text<ref name="a">Cite {{cite book|title=T}} [http://x.org here]</ref> more<ref name=b/> '
     'end<ref name="c" />.<REF>x</REF>', "text more end"),
    # categories, files with captions (links and single brackets inside), interlanguage links;
    # a leading colon makes a category link a plain link
    ("Word [[Category:Anarchism| ]] [[File:Foo.jpg|thumb|A [[cat]] of Bicyclo[1.1.0]butane]] "
     "[[Image:Bar.png]] [[de:Anarchismus]] [[be-x-old:Анархізм]] [[:Category:Cats|cat pages]] "
     "[[wikt:brigand|brigand]] end", "word cat pages brigand end"),
    # entities; letters outside a-z are not letters here
    ("Caf&eacute; &amp; bar&nbsp;&ndash; O&#39;Brien", "caf bar o brien"),
    ("Encyclopædia Zürich", "encyclop dia z rich"),
    # digits one by one, as text8 spells them
    ("In 1984, 2.5 m", "in one nine eight four two five m"),
    ("0123456789", "zero one two three four five six seven eight nine"),
    # punctuation and white space
    ("Hello,   World! (It's) \"quoted\";\ta-b/c: d?\n\n* item\n# step", "hello world it s quoted a b c d item step"),
    # headings, bold, italic
    ("== History ==\n'''Bold''' and ''italic'' text\n=== Sub-part ===\nx", "history bold and italic text sub part x"),
    ("'''''both'''''ways", "bothways"),
    # external links keep their label; bare URLs go
    ("See [http://example.com/x Example Site] and [https://foo.org] or http://bar.com/y?q=1 now",
     "see example site and or now"),
    # comments, HTML tags (a line break is a space), LaTeX, magic words
    ('a<!-- hidden\n[[x]] -->b <span style="color:red">c</span><br/>d <math>\\frac{1}{2}</math> e', "ab c d e"),
    ("__NOTOC__Start", "start"),
    ("", ""),
    ("{{only a template}}", ""),
])
def test_clean_wikitext_by_hand(markup, expected):
    assert clean_wikitext(markup) == expected


def test_clean_wikitext_rejects_non_text():
    with pytest.raises(TypeError, match="bytes"):
        clean_wikitext(b"[[x]]")


# -- the corpus -------------------------------------------------------------------------------------


def test_corpus_is_the_articles_in_order(corpus):
    whole = "".join(corpus.text(name) for name in TEXT_SPLIT_NAMES)
    assert len(whole) >= 1_000_000
    assert set(whole) == set(TEXT_ALPHABET)
    assert "  " not in whole and whole == whole.strip()
    # The first article is Anarchism (the redirect page before it is skipped); words cleaned by hand
    # from its first sentence.
    assert whole.startswith("anarchism is a political philosophy that advocates self governed societies "
                            "based on voluntary institutions these are often described as stateless societies")


@pytest.mark.slow
def test_corpus_equals_a_second_reading_of_the_dump(corpus):
    """The whole tree at once and element paths, not iterparse: articles (namespace 0, not a
    redirect) in file order, each cleaned, joined by one space."""
    root = ElementTree.parse(bz2.open(data._enwiki_path())).getroot()
    ns = {"mw": root.tag[1:].partition("}")[0]}
    articles = [page.find("mw:revision/mw:text", ns).text or "" for page in root.findall("mw:page", ns)
                if page.find("mw:ns", ns).text == "0" and page.find("mw:redirect", ns) is None]
    assert len(articles) == 106
    expected = " ".join(t for t in map(clean_wikitext, articles) if t)
    assert "".join(corpus.text(name) for name in TEXT_SPLIT_NAMES) == expected


@pytest.mark.parametrize("fractions", [(0.90, 0.05, 0.05), (0.5, 0.3, 0.2)])
def test_splits_are_consecutive_pieces_in_the_given_fractions(corpus, fractions):
    other = corpus if fractions == (0.90, 0.05, 0.05) else TextCorpus(fractions=fractions)
    pieces = [other.text(name) for name in TEXT_SPLIT_NAMES]
    whole = "".join(corpus.text(name) for name in TEXT_SPLIT_NAMES)
    assert "".join(pieces) == whole
    start = 0
    for piece, fraction in zip(pieces, fractions):
        assert whole[start:start + len(piece)] == piece
        start += len(piece)
    assert abs(len(pieces[0]) - fractions[0] * len(whole)) <= 1
    assert abs(len(pieces[0]) + len(pieces[1]) - (fractions[0] + fractions[1]) * len(whole)) <= 1


@pytest.mark.parametrize("length", [256, 1000, 2])
def test_split_windows_are_slices_of_the_text(corpus, length):
    other = corpus if length == 256 else TextCorpus(length=length)
    for name in TEXT_SPLIT_NAMES:
        text, seqs = other.text(name), other.split(name)
        expected = windows(text, length)
        assert seqs.dtype == torch.long and tuple(seqs.shape) == (len(text) // length, length)
        if length == 2:   # the decoder is not needed for these: compare to the ids computed by hand
            assert seqs[:50].tolist() == [[TEXT_ALPHABET.index(c) for c in w] for w in expected[:50]]
        else:
            assert other.decode(seqs) == expected


def test_split_is_a_copy(corpus):
    seqs = corpus.split("test")
    seqs[0, 0] = 26
    assert corpus.split("test")[0, 0].item() == TEXT_ALPHABET.index(corpus.text("test")[0])


def test_encode_and_decode_by_hand(corpus):
    ids = corpus.encode("hello world")
    assert ids.dtype == torch.long
    assert ids.tolist() == [8, 5, 12, 12, 15, 0, 23, 15, 18, 12, 4]
    assert corpus.encode(TEXT_ALPHABET).tolist() == list(range(27))
    assert corpus.encode("").tolist() == []
    assert corpus.decode(ids) == "hello world"
    assert corpus.decode([[1, 2], [26, 0]]) == ["ab", "z "]
    assert corpus.decode(np.array([3, 1, 20], dtype=np.int32)) == "cat"
    assert corpus.decode(torch.tensor([], dtype=torch.long)) == ""
    assert corpus.class_names == tuple(TEXT_ALPHABET) and corpus.num_classes == 27 and corpus.name == "enwiki"


def test_encode_decode_round_trip(corpus):
    text = corpus.text("valid")
    assert corpus.decode(corpus.encode(text)) == text
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 27, (5, 40), generator=g)
    assert torch.equal(torch.stack([corpus.encode(s) for s in corpus.decode(ids)]), ids)


def test_bad_names_characters_ids_and_lengths(corpus):
    for bad in ("validation", "Train", None, 0):
        for method in (corpus.split, corpus.text):
            with pytest.raises(ValueError, match=f"{bad!r}.*" if bad is not None else "None") as info:
                method(bad)
            assert "'train', 'valid', 'test'" in str(info.value)
    with pytest.raises(ValueError, match="'é' at position 1"):
        corpus.encode("héllo")
    with pytest.raises(ValueError, match="'H' at position 0"):
        corpus.encode("Hello, world")
    with pytest.raises(ValueError, match="'3'"):
        corpus.encode("abc3")
    with pytest.raises(TypeError, match="bytes"):
        corpus.encode(b"abc")
    for bad_ids, message in (([0, 27], "27"), ([[-1, 0]], "-1"), (torch.tensor([0.0, 1.0]), "dtype"),
                             (torch.tensor([True]), "dtype"), (torch.zeros(2, 2, 2, dtype=torch.long), "shape"),
                             (torch.tensor(3), "shape")):
        with pytest.raises(ValueError, match=message):
            corpus.decode(bad_ids)
    for length in (1, 0, -5, 2.5, True, "256", None):
        with pytest.raises(ValueError, match="length"):
            TextCorpus(length=length)
    for fractions in ((0.5, 0.5), (0.9, 0.2, -0.1), (0.5, 0.3, 0.3), (0.9, 0.1, 0.0), 0.9, ("a", "b", "c")):
        with pytest.raises(ValueError, match="fractions"):
            TextCorpus(fractions=fractions)


def test_missing_gensim_says_how_to_install_it(monkeypatch):
    def not_installed(name):
        raise data.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(data.metadata, "distribution", not_installed)
    with pytest.raises(ModuleNotFoundError, match="pip install gensim"):
        TextCorpus()


@pytest.mark.slow
def test_builds_without_importing_gensim_or_the_network(tmp_path):
    """In a fresh process (this one may have imported gensim elsewhere, and caches the text)."""
    script = (
        "import socket, sys\n"
        "from mdiff_lite.data import TextCorpus\n"
        "def refuse(*args, **kwargs): raise OSError('no network in the corpus')\n"
        "socket.socket.connect = socket.socket.connect_ex = socket.getaddrinfo = refuse\n"
        "assert TextCorpus().split('test').shape[0] > 0\n"
        "assert 'gensim' not in sys.modules, 'gensim was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=300)


# -- reference bits, refitted with counters ---------------------------------------------------------


def test_reference_bits_refitted_by_hand(corpus):
    K, L = 27, corpus.length
    train, tests = corpus.text("train"), windows(corpus.text("test"), L)
    counts, pairs, after = Counter(train), Counter(zip(train, train[1:])), Counter(train[:-1])
    unigram = {c: (counts[c] + 1) / (len(train) + K) for c in TEXT_ALPHABET}
    unigram_bits, bigram_bits = [], []
    for seq in tests:
        unigram_bits += [-math.log2(unigram[c]) for c in seq]
        bigram_bits.append(-math.log2(unigram[seq[0]]))
        bigram_bits += [-math.log2((pairs[a, b] + 1) / (after[a] + K)) for a, b in zip(seq, seq[1:])]
    n = len(tests) * L
    assert len(unigram_bits) == len(bigram_bits) == n

    refs = corpus.reference_bits()
    assert set(refs) == {"uniform", "unigram", "bigram", "n_chars"}
    assert refs["n_chars"] == n
    assert refs["uniform"] == pytest.approx(math.log2(27), rel=1e-12)
    assert refs["unigram"] == pytest.approx(math.fsum(unigram_bits) / n, rel=1e-9)
    assert refs["bigram"] == pytest.approx(math.fsum(bigram_bits) / n, rel=1e-9)
    assert refs["bigram"] < refs["unigram"] < refs["uniform"]
    refs["unigram"] = 0.0   # a copy: the cached numbers stay
    assert corpus.reference_bits()["unigram"] == pytest.approx(math.fsum(unigram_bits) / n, rel=1e-9)
