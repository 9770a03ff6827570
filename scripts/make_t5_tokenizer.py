"""Builds a small T5-style tokenizer.json (SentencePiece unigram, `</s>` appended, `<pad>`=0,
`</s>`=1, `<unk>`=2, `<extra_id_N>` sentinels at the end of the vocabulary as in T5) for tiny test
models. The real Flan-T5 tokenizer.json ships with the Flan-T5 checkpoint folder.

Usage: $PY scripts/make_t5_tokenizer.py OUT.json [VOCAB] [EXTRA_IDS] [WORLD_DIR]

With WORLD_DIR (a `lion world generate` folder) the vocabulary is built, not trained: every word
of that world's LION training JSON (instructions with their tag prompts, answers, tags) as a whole
piece (with and without the word-start mark), plus single characters and digits, so boxes read
digit by digit and no piece spans two numbers. VOCAB is then ignored (the size is what the world
needs). `crates/lion-core/assets/shapes-tokenizer.json` (the `shapes` preset) is
`make_t5_tokenizer.py shapes-tokenizer.json 0 10 WORLD` on `lion world generate --seed 1000
--train 2000 --val 64 --test 64 --size 96`.
"""
import glob
import json
import os
import sys

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

CORPUS = [
    "According to <extra_id_0>, you are allowed to use or partially use the following tags: [a, b]. ",
    "Please describe the image using a single short sentence.",
    "Question: What colour is the circle? Short answer: red",
    "In the image <image>, can you locate the small blue square and let me know its coordinates?",
    "Answer: [0.440,0.060,0.650,0.367] [0.123,0.456,0.789,1.000]",
    "a red circle next to a small blue square on a striped background",
    "two green triangles and a yellow star above a purple hexagon",
    "how many shapes are there? three. is there a circle? yes no",
    "left right top bottom above below large small big tiny grey gray orange white black",
    "circle: 0.92, square: 0.81, stripes: 0.77, red: 0.66",
    "0 1 2 3 4 5 6 7 8 9 . , : ; ? ! [ ] ( ) - ' \"",
]


def world_corpus(world):
    """The text a ShapesWorld model reads and writes, in a fixed order."""
    tag_prompt = CORPUS[0].split("[")[0]
    out = []
    for path in sorted(glob.glob(os.path.join(world, "lion_*_train.json"))):
        for r in json.load(open(path)):
            tags = ", ".join(r["tags"])
            out.append(f"{tag_prompt}[{tags}]. {r['question']}")
            out.append(r["answer"] if isinstance(r["answer"], str) else r["answer"][0])
            out.append(", ".join(f"{t}: 0.{(7 * i) % 100:02d}" for i, t in enumerate(r["tags"])))
    return out


def world_vocab(corpus, specials):
    """Unigram pieces: specials, box pieces, whole words (most frequent first), characters.

    Scores make a whole word always win over spelling it out, and characters the fallback."""
    import re
    from collections import Counter

    words = Counter(w for line in corpus for w in re.findall(r"[A-Za-z]+", line))
    pieces = [(t, 0.0) for t in specials]
    pieces += [("\u2581[0.", -2.0), (",0.", -2.0), ("\u2581[1.", -3.0), (",1.", -3.0)]
    for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        pieces += [("\u2581" + w, -3.0), (w, -4.0)]
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;?![]()-'\"<>_"
    pieces += [("\u2581", -6.0)] + [(c, -10.0) for c in chars]
    seen = set()
    return [p for p in pieces if not (p[0] in seen or seen.add(p[0]))]


def main():
    out = sys.argv[1]
    vocab = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    extra = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Replace("  ", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    specials = ["<pad>", "</s>", "<unk>"]
    trainer = trainers.UnigramTrainer(
        vocab_size=max(vocab - extra, 1),
        special_tokens=specials,
        unk_token="<unk>",
        initial_alphabet=list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;?![]()-'\"<>_"),
    )
    if len(sys.argv) > 4:
        pieces = world_vocab(CORPUS + world_corpus(sys.argv[4]), specials)
        tok.model = models.Unigram(pieces, unk_id=2, byte_fallback=False)
        tok.add_special_tokens(specials)
    else:
        tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    tok.add_special_tokens([f"<extra_id_{i}>" for i in reversed(range(extra))])
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    tok.save(out)
    print(out, "vocab", tok.get_vocab_size(), "extra_id_0 =", tok.token_to_id("<extra_id_0>"))


if __name__ == "__main__":
    main()
