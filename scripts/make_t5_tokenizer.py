"""Builds a small T5-style tokenizer.json (SentencePiece unigram, `</s>` appended, `<pad>`=0,
`</s>`=1, `<unk>`=2, `<extra_id_N>` sentinels at the end of the vocabulary as in T5) for tiny test
models. The real Flan-T5 tokenizer.json ships with the Flan-T5 checkpoint folder.

Usage: $PY scripts/make_t5_tokenizer.py OUT.json [VOCAB] [EXTRA_IDS]
"""
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
        vocab_size=vocab - extra,
        special_tokens=specials,
        unk_token="<unk>",
        initial_alphabet=list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;?![]()-'\"<>_"),
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    tok.add_special_tokens([f"<extra_id_{i}>" for i in reversed(range(extra))])
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    tok.save(out)
    print(out, "vocab", tok.get_vocab_size(), "extra_id_0 =", tok.token_to_id("<extra_id_0>"))


if __name__ == "__main__":
    main()
