"""Reference fixtures for lion-metrics (and the lion-data reader fixtures).

Writes tests/fixtures/metrics/:
  captions.json      220 images, 5 synthetic references + 1 prediction each (varied casing,
                     punctuation, numbers, hyphens, apostrophes, brackets, abbreviations, ...), and
                     pycocoevalcap's results on them: its PTB tokenisation of every caption (real
                     Java PTBTokenizer, stanford-corenlp-3.4.1.jar inside pycocoevalcap), BLEU-1..4,
                     ROUGE-L and CIDEr(-D), corpus and per image.
  ptb_random.json    1000 adversarial random lines (glued words, odd spacing) + Java output.
  ptb_stress.json    extra hard lines (abbreviations, URLs, smileys, currency, quotes, ...) with the
                     Java tokenizer's raw output (before punctuation removal), run as one file.
  rec.json           IoU cases computed here.
(vqa_official.json and aokvqa_official.json come from the official code: fixtures_vqa_official.py.)
Writes tests/fixtures/data/: small files in each official dataset format (Karpathy split, COCO
  captions_*.json, VQA questions/annotations, A-OKVQA, TextCaps, RefCOCO refs pickle (Python 3
  protocol 2, and a Python-2-style one with BINSTRING strings) + instances.json, LION training
  JSON/JSON lines, result files) plus malformed variants; the Rust tests check what they must say.

Run: PY=$(scripts/venv.sh); $PY scripts/fixtures_metrics.py   (needs `java` on PATH)
"""
import json
import os
import random
import re
import subprocess
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "metrics")


# ----------------------------------------------------------------------------------------------
# captions
# ----------------------------------------------------------------------------------------------

SUBJ = [
    "a man", "a woman", "two dogs", "a little girl", "three people", "a young boy", "an old man",
    "a group of kids", "a black-and-white cat", "two men", "a brown horse", "a 10-year-old boy",
    "a woman's dog", "the players", "a couple", "some tourists", "a chef", "Mr. Smith", "a baby",
    "two zebras", "a large elephant", "a police officer", "an airplane", "a red double-decker bus",
]
VERB = [
    "is sitting on", "stands next to", "is riding", "walks along", "is holding", "looks at",
    "plays with", "is eating", "jumps over", "is lying on", "waits at", "is flying over",
    "isn't touching", "can't reach", "is parked near", "leans against", "runs across",
]
OBJ = [
    "a bench", "the beach", "a skateboard", "a wooden table", "a pizza", "a surfboard", "the street",
    "a frisbee", "a red fire hydrant", "the kitchen counter", "a laptop", "an umbrella", "the grass",
    "a snowy hill", "a train station", "a bowl of fruit", "a tennis racket", "the ocean's edge",
    "a sign that says \"STOP\"", "a clock tower (at 3:00)", "a 5-story building", "St. Mark's square",
    "the U.S. flag", "a $5 bill", "a 1,000-piece puzzle", "a 3.5 inch screen", "a half-eaten sandwich",
    "the dogs' toys", "a well-known statue", "an old-fashioned car", "two slices of pizza",
    "some broccoli & carrots", "a T-shirt", "the rock'n'roll band", "a cup of coffee",
]
TAIL = [
    "", "", "", " in the park", " on a sunny day", " at night", " near the water", " outside",
    " in front of a building", ", smiling", " -- it's raining", " while it's snowing", " (in color)",
    " at 5 o'clock", " with 2 friends", " in the 1990s", "; people watch", ": a close-up",
    " in the U.S.", " on Jan. 5th", " at St. Louis", " ... again", " near a co-op", " vs. another team",
]
END = [".", ".", ".", "", "", "!", " .", "...", "?", ". ", "  "]


def caption(rng):
    s = f"{rng.choice(SUBJ)} {rng.choice(VERB)} {rng.choice(OBJ)}{rng.choice(TAIL)}{rng.choice(END)}"
    r = rng.random()
    if r < 0.55:
        s = s[0].upper() + s[1:]
    elif r < 0.62:
        s = s.upper()
    elif r < 0.70:
        s = s.title()
    if rng.random() < 0.08:
        s = " " + s
    return s


def perturb(rng, s):
    """A prediction close to a reference: drop/duplicate/swap words, change case/punctuation."""
    w = s.split()
    k = rng.random()
    if k < 0.25 and len(w) > 3:
        del w[rng.randrange(len(w))]
    elif k < 0.45:
        i = rng.randrange(len(w))
        w.insert(i, w[i])
    elif k < 0.6 and len(w) > 2:
        i = rng.randrange(len(w) - 1)
        w[i], w[i + 1] = w[i + 1], w[i]
    out = " ".join(w)
    if rng.random() < 0.3:
        out = out.lower().rstrip(".") + rng.choice([".", "", " .", "!"])
    return out


def java_tokenize(lines):
    """Runs the jar exactly as pycocoevalcap's PTBTokenizer does (one file, lines joined by \\n)."""
    import pycocoevalcap.tokenizer.ptbtokenizer as ptb

    jar_dir = os.path.dirname(os.path.abspath(ptb.__file__))
    text = "\n".join(l.replace("\n", " ") for l in lines)
    with tempfile.NamedTemporaryFile(delete=False, dir=jar_dir) as f:
        f.write(text.encode())
    try:
        out = subprocess.run(
            ["java", "-cp", ptb.STANFORD_CORENLP_3_4_1_JAR, "edu.stanford.nlp.process.PTBTokenizer",
             "-preserveLines", "-lowerCase", os.path.basename(f.name)],
            cwd=jar_dir, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True,
        ).stdout.decode()
    finally:
        os.remove(f.name)
    got = out.split("\n")
    return [g.rstrip() for g in got[: len(lines)]]


def captions():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    rng = random.Random(1234)
    images = []
    for i in range(220):
        refs = [caption(rng) for _ in range(5)]
        k = rng.random()
        if k < 0.5:
            pred = perturb(rng, rng.choice(refs))
        elif k < 0.9:
            pred = caption(rng)
        else:
            pred = rng.choice(["a man.", "A PICTURE OF SOMETHING", "two dogs playing", "a cat",
                               "there is a bench in the park", "a", "the man's dog's toy isn't new"])
        images.append({"image_id": 1000 + 7 * i, "references": refs, "prediction": pred})
    images[17]["prediction"] = "."  # tokenises to the empty string
    images[18]["prediction"] = "..."
    gts = {im["image_id"]: [{"caption": c} for c in im["references"]] for im in images}
    res = {im["image_id"]: [{"caption": im["prediction"]}] for im in images}
    tok = PTBTokenizer()
    gts_t = tok.tokenize(gts)
    res_t = tok.tokenize(res)
    bleu, bleu_per = Bleu(4).compute_score(gts_t, res_t, verbose=0)
    rouge, rouge_per = Rouge().compute_score(gts_t, res_t)
    cider, cider_per = Cider().compute_score(gts_t, res_t)
    # raw Java output per line, run the way pycocoevalcap runs it (refs file, then preds file)
    ref_lines = [c for im in images for c in im["references"]]
    pred_lines = [im["prediction"] for im in images]
    java_refs = java_tokenize(ref_lines)
    java_preds = java_tokenize(pred_lines)
    for n, im in enumerate(images):
        iid = im["image_id"]
        im["references_tokenized"] = gts_t[iid]
        im["prediction_tokenized"] = res_t[iid][0]
        im["references_java"] = java_refs[5 * n: 5 * n + 5]
        im["prediction_java"] = java_preds[n]
        im["bleu"] = [float(bleu_per[k][n]) for k in range(4)]
        im["rouge_l"] = float(rouge_per[n])
        im["cider"] = float(cider_per[n])
    doc = {
        "source": "pycocoevalcap 1.2 (PTBTokenizer via Java, Bleu(4) 'closest', Rouge, Cider)",
        "bleu": [float(b) for b in bleu],
        "rouge_l": float(rouge),
        "cider": float(cider),
        "images": images,
    }
    with open(os.path.join(OUT, "captions.json"), "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
    print(f"captions: {len(images)} images, CIDEr {cider:.4f} BLEU-4 {bleu[3]:.4f} ROUGE-L {rouge:.4f}")


STRESS = [
    "A man's dog (brown) isn't \"happy\" -- it's 3.5 feet tall, 1,000 lbs.",
    "Two people at St. Mary's church at 3:00 p.m. with U.S. flags!",
    "The colour grey is favourite; a well-known cat's toy & a $5 bill... really?",
    "",
    "Mr. Smith's kids aren't sitting on the co-op's 10% off sign :)",
    "She said 'hello' and can't won't don't I'm we're they'll you'd",
    "A cat on a mat.  Two dogs / three cats {x} [y] 1/2 e-mail @home #tag",
    "I cannot believe it, gonna gotta wanna lemme gimme",
    "the dogs' bowls and James' car o'clock rock'n'roll",
    "what?! wow!!! ok.... hmm.. a . b",
    "See Mr. Smith and Dr. Who at St. Louis on Jan. 5th etc.",
    "a 2x4 board, 10-year-old boy, 1990s car, 5'10\" tall, 3-4 dogs",
    "a*b 4*4 x+y=z a_b ~tilde^ |pipe| <tag> &amp; 50\u00a2 \u00a35 \u20ac5",
    "\u2018quoted\u2019 \u201cdouble\u201d don\u2019t it\u2019s \u2014 \u2013 \u2026 caf\u00e9 na\u00efve",
    "a man's. A woman's? The '90s style",
    "www.google.com http://x.com/a?b=c foo@bar.com",
    "a,b 1.5.2 3.14.",
    "See etc. The end. We met Jan. Smith",
    "WE'RE HERE YOU'LL I'M",
    "the centre theatre organise realise labour neighbour aluminium",
    "the man is ill. car wash. a 6 ft. tall st. vs. ave. no. 5 and no. way",
    "photo by J. Smith plan b. item A. -5 degrees +5 a-5",
    "2 1/2 dogs 3/4 cup black/white and/or --- ----",
    "AT&T at&t \u00abquote\u00bb #1 :( ;) :D :P a:(b",
    "there is a. dog and x. y z. the u. s. a dog in a.",
    "(it's) \"hello\" it's' 's",
    "A DOG'S BONE ISN'T THERE. THEY'RE HERE, AREN'T THEY?",
    "a man with a hat.a woman with a bag",
    "Skiers on the slopes; snow-covered trees: winter!",
    "a sign reading \"no parking\" next to a bus-stop",
    "three-quarters of a pizza, half a sandwich & 2 cups",
    "a 24\" tv, 2'x3' rug and a 100-meter race",
    "the no. 7 bus at 10:45 a.m. on Main St.",
    "a cat (or two) [maybe three] {four?}",
    "Y'all ain't gonna believe this, ma'am",
    "a dog -- or a wolf? -- stands in the snow",
    "It's a bird... it's a plane!",
    "the Smiths' house; Jesus' statue",
    "a 1st-place trophy, 2nd place and 3rd",
    "an F-16 jet and a B-52 bomber",
    "e.g. a man, i.e. a person, etc.",
    "the Mt. Everest and Ft. Worth and Ave. Q",
    "a kid's 'birthday' party",
    "a dog`s toy and a man\u00b4s hat",
    "'Twas the night; 'til dawn; 'cause why not",
    "about 50% of people & 25 % of dogs",
    "the 2010-2011 season 3/4/2012 12/25/99",
    "temperatures of -5 and +10 degrees",
    "O'Neil and D'Angelo went to McDonald's",
    "hello!!! what??? ok?!",
    "a man -- a woman - a child",
    "an elephant!A giraffe?A zebra.",
    "A TV, a DVD, a CD-ROM and a PC.",
    "Inc. Corp. Ltd. Co. Bros. Jr. Sr.",
    "a Ph.D. student and an M.D.",
    "a man : a woman ; a child",
    "#1 fan and #hashtag and @user and @ alone",
    "a 3-D movie, a 4x4 truck, a 5k race",
    "half-and-half, mother-in-law, state-of-the-art",
    "rock 'n' roll and fish 'n' chips",
    "a man with $100 and \u00a350 and \u20ac20 and \u00a5500",
    "I'd like 2 hot-dogs, please!",
    "Look at that!! Isn't it cute?",
    "a dog \U0001f436 on grass \U0001f600! dog\U0001f436cat",
    "na\u00efve caf\u00e9 \u00fcber \u00f1and\u00fa 25\u00b0C 3\u00d74 \u00bd cup \u2122 \u00a9",
    "\u4e2d\u6587 \u5b57\u5e55 and \u65e5\u672c, \u03b1 \u03b2 \u03a9 \u00b5",
    "\u201chi\u201d \u2018yo\u2019 \u00abq\u00bb \u2039r\u203a \u00a7 \u2022 \u2020 \u2030",
    "x \u2265 y \u2264 z \u2260 w \u00b1 1 \u2190 \u2192 \u00bfque? \u00a1hola!",
    "the dog's",
]


def ptb_stress():
    java = java_tokenize(STRESS)
    with open(os.path.join(OUT, "ptb_stress.json"), "w") as f:
        json.dump({"source": "stanford-corenlp-3.4.1.jar PTBTokenizer -preserveLines -lowerCase",
                   "lines": STRESS, "java": java}, f, indent=1, ensure_ascii=False)
    print(f"ptb stress: {len(STRESS)} lines")


RANDOM_WORDS = (
    "a man woman dog dogs cat two 2 three 3 10 100 1,000 3.5 12:30 the of on in with and is are "
    "sitting standing riding holding next to near red blue black-and-white well-known T-shirt "
    "man's woman's dogs' it's isn't can't don't won't they're we'll I'm you've she'd "
    "St. Mr. Dr. U.S. etc. e.g. a.m. p.m. No. vs. Jan. ft. "
    "( ) [ ] { } \" ' , . ! ? ; : - -- ... & % $5 $ # @ / * + = "
    "o'clock rock'n'roll 1990s 5th 2x4 10-year-old co-op e-mail www.x.com :) ;) "
    "skateboard frisbee pizza bench tennis racket giraffe zebra elephant bus train kite").split()


def ptb_random():
    """Adversarial random lines (words glued together, odd spacing, casing): the Java output."""
    rng = random.Random(3)
    lines = []
    for _ in range(1000):
        s = ""
        for _ in range(rng.randint(1, 14)):
            s += rng.choice(RANDOM_WORDS) + rng.choice([" ", " ", " ", " ", "", "  "])
        r = rng.random()
        if r < 0.3:
            s = s.capitalize()
        elif r < 0.4:
            s = s.upper()
        elif r < 0.5:
            s = s.title()
        lines.append(s.rstrip() if rng.random() < 0.7 else s)
    java = java_tokenize(lines)
    with open(os.path.join(OUT, "ptb_random.json"), "w") as f:
        json.dump({"source": "stanford-corenlp-3.4.1.jar PTBTokenizer -preserveLines -lowerCase",
                   "lines": lines, "java": java}, f, separators=(",", ":"), ensure_ascii=False)
    print(f"ptb random: {len(lines)} lines")


# ----------------------------------------------------------------------------------------------
# IoU (VQA and A-OKVQA goldens: scripts/fixtures_vqa_official.py, from the official code)
# ----------------------------------------------------------------------------------------------

def rec():
    rng = random.Random(7)
    for _ in range(60 * 11):  # the draws of the A-OKVQA cases this seed made before (rec.json as committed)
        rng.choice(range(9))
    boxes = []
    for i in range(80):
        def box():
            x, y = rng.uniform(0, 400), rng.uniform(0, 300)
            return [x, y, x + rng.uniform(0, 200), y + rng.uniform(0, 200)]
        a = box()
        b = box() if i % 3 else [v + rng.uniform(-15, 15) for v in a]
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
        boxes.append({"pred": a, "gt": b, "iou": inter / union if union > 0 else 0.0})
    with open(os.path.join(OUT, "rec.json"), "w") as f:
        json.dump({"cases": boxes}, f, indent=1)
    print("rec written")


def readers():
    import pickle

    out = os.path.join(ROOT, "tests", "fixtures", "data")
    os.makedirs(out, exist_ok=True)

    def dump(name, obj):
        with open(os.path.join(out, name), "w") as f:
            json.dump(obj, f, indent=1)

    def lines(name, text):
        with open(os.path.join(out, name), "w") as f:
            f.write(text)

    sent = lambda raw: {"tokens": raw.lower().split(), "raw": raw, "imgid": 0, "sentid": 0}
    karpathy = {"dataset": "coco", "images": [
        {"filepath": "val2014", "sentids": [0, 1], "filename": "COCO_val2014_000000391895.jpg", "imgid": 0,
         "split": "test", "sentences": [sent("A man riding a bike."), sent("A person on a bicycle.")],
         "cocoid": 391895},
        {"filepath": "train2014", "sentids": [2], "filename": "COCO_train2014_000000000009.jpg", "imgid": 1,
         "split": "train", "sentences": [sent("Food in a bowl.")], "cocoid": 9},
        {"filepath": "val2014", "sentids": [3], "filename": "COCO_val2014_000000000042.jpg", "imgid": 2,
         "split": "restval", "sentences": [sent("A dog.")], "cocoid": 42},
    ]}
    dump("dataset_coco.json", karpathy)
    bad = json.loads(json.dumps(karpathy))
    del bad["images"][1]["sentences"]
    dump("dataset_coco_bad.json", bad)

    coco = {"info": {}, "licenses": [],
            "images": [{"id": 391895, "file_name": "COCO_val2014_000000391895.jpg", "width": 640, "height": 360},
                       {"id": 522418, "file_name": "COCO_val2014_000000522418.jpg", "width": 640, "height": 480}],
            "annotations": [{"image_id": 391895, "id": 1, "caption": "A man riding a bike."},
                            {"image_id": 522418, "id": 2, "caption": "A woman cutting a cake."},
                            {"image_id": 391895, "id": 3, "caption": "A person on a bicycle."}]}
    dump("captions_val2014.json", coco)
    bad = json.loads(json.dumps(coco))
    bad["annotations"][2]["image_id"] = 777
    dump("captions_bad.json", bad)
    with open(os.path.join(out, "captions_broken.json"), "w") as f:
        f.write('{"images": [\n  {"id": 1, "file_name": "a.jpg"},\n  {"id": 2 "file_name": "b.jpg"}\n]}\n')

    dump("vqa_questions.json", {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
                                "data_subtype": "val2014", "questions": [
        {"image_id": 391895, "question": "Is the man riding a bike?", "question_id": 3918950},
        {"image_id": 391895, "question": "How many wheels?", "question_id": 3918951}]})
    ans = lambda xs: [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(xs)]
    anns = {"info": {}, "annotations": [
        {"question_type": "is the", "multiple_choice_answer": "yes", "answers": ans(["yes"] * 9 + ["no"]),
         "image_id": 391895, "answer_type": "yes/no", "question_id": 3918950},
        {"question_type": "how many", "multiple_choice_answer": "2", "answers": ans(["2"] * 6 + ["two"] * 4),
         "image_id": 391895, "answer_type": "number", "question_id": 3918951}]}
    dump("vqa_annotations.json", anns)
    bad = json.loads(json.dumps(anns))
    bad["annotations"][1]["answers"] = "2"
    dump("vqa_annotations_bad.json", bad)

    aok = [{"split": "val", "image_id": 461751, "question_id": "22jbM6gDxdaMaunuzgrsBB",
            "question": "What is in the motorcyclist's mouth?", "choices": ["toothpick", "food", "popsicle stick", "cigarette"],
            "correct_choice_idx": 3, "direct_answers": ["cigarette"] * 10, "difficult_direct_answer": False,
            "rationales": ["He's smoking."]},
           {"split": "val", "image_id": 123, "question_id": "abc",
            "question": "What sport?", "choices": ["tennis", "golf"], "correct_choice_idx": 0,
            "direct_answers": ["tennis"] * 8 + ["racket", "ball"], "difficult_direct_answer": False,
            "rationales": []}]
    dump("aokvqa_v1p0_val.json", aok)
    bad = json.loads(json.dumps(aok))
    bad[1]["correct_choice_idx"] = 5
    dump("aokvqa_bad.json", bad)

    tc = {"dataset_type": "val", "dataset_name": "textcaps", "data": [
        {"image_id": "0a0bc91825468c45", "image_classes": ["Vehicle"], "image_width": 1024, "image_height": 683,
         "set_name": "val", "image_name": "0a0bc91825468c45", "image_path": "train/0a0bc91825468c45.jpg",
         "caption_id": 1, "caption_str": "A bus that says 42.", "reference_strs": ["A bus that says 42.", "Bus number 42."]},
        {"image_id": "0a0bc91825468c45", "image_width": 1024, "image_height": 683, "set_name": "val",
         "image_name": "0a0bc91825468c45", "caption_id": 2, "caption_str": "Bus number 42.",
         "reference_strs": ["A bus that says 42.", "Bus number 42."]},
        {"image_id": "ffe1", "image_width": 10, "image_height": 10, "set_name": "val", "image_name": "ffe1",
         "caption_id": 3, "caption_str": "A sign.", "reference_strs": ["A sign."]}]}
    dump("TextCaps_0.1_val.json", tc)
    bad = json.loads(json.dumps(tc))
    bad["data"][2]["image_id"] = None
    dump("textcaps_bad.json", bad)

    refs = [
        {"sent_ids": [0, 1], "file_name": "COCO_train2014_000000581857_1719310.jpg", "ann_id": 1719310,
         "ref_id": 0, "image_id": 581857, "split": "testA", "category_id": 1,
         "sentences": [{"tokens": ["woman", "in", "front"], "raw": "Woman in front", "sent_id": 0, "sent": "woman in front"},
                       {"tokens": ["lady", "left"], "raw": "lady left", "sent_id": 1, "sent": "lady left"}]},
        {"sent_ids": [2], "file_name": "COCO_train2014_000000581857_1719311.jpg", "ann_id": 1719311,
         "ref_id": 1, "image_id": 581857, "split": "val", "category_id": 18,
         "sentences": [{"tokens": ["dog"], "raw": "the dog \u00e9", "sent_id": 2, "sent": "the dog \u00e9"}]},
    ]
    inst = {"images": [{"id": 581857, "file_name": "COCO_train2014_000000581857.jpg", "width": 640, "height": 427}],
            "annotations": [{"id": 1719310, "image_id": 581857, "bbox": [103.93, 299.99, 134.22, 127.01],
                             "category_id": 1, "area": 1.0, "iscrowd": 0},
                            {"id": 1719311, "image_id": 581857, "bbox": [10, 20, 30, 40.5], "category_id": 18,
                             "area": 1.0, "iscrowd": 0}],
            "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]}
    dump("instances.json", inst)
    with open(os.path.join(out, "refs(unc).p"), "wb") as f:
        pickle.dump(refs, f, protocol=2)

    class Py2Pickler(pickle._Pickler):
        """Writes str the way Python 2 wrote its byte strings (SHORT_BINSTRING / BINSTRING)."""
        dispatch = dict(pickle._Pickler.dispatch)

        def save_py2_str(self, obj):
            b = obj.encode("utf-8")
            if len(b) < 256:
                self.write(pickle.SHORT_BINSTRING + bytes([len(b)]) + b)
            else:
                self.write(pickle.BINSTRING + len(b).to_bytes(4, "little") + b)
            self.memoize(obj)

        dispatch[str] = save_py2_str

    import io
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(refs)
    with open(os.path.join(out, "refs_py2.p"), "wb") as f:
        f.write(buf.getvalue())
    bad = json.loads(json.dumps(refs))
    del bad[1]["ann_id"]
    with open(os.path.join(out, "refs_bad.p"), "wb") as f:
        pickle.dump(bad, f, protocol=2)
    with open(os.path.join(out, "refs_truncated.p"), "wb") as f:
        f.write(pickle.dumps(refs, protocol=2)[:150])

    lion = [{"image": "coco/1.jpg", "question": "Describe the image briefly.", "answer": "A dog.",
             "category": "caption", "tags": ["dog", "grass"]},
            {"image": "coco/2.jpg", "question": "Where is the cat?", "answer": ["[0.1,0.2,0.5,0.9]", "x"],
             "category": "ref", "tags": "cat, sofa"},
            {"image_path": "vg/3.jpg", "question": "What colour?", "answer": "red", "category": "vqa"}]
    dump("lion_train.json", lion)
    lines("lion_train.jsonl", "\n".join(json.dumps(r) for r in lion) + "\n\n")
    lines("lion_bad.jsonl", json.dumps(lion[0]) + "\n" + json.dumps(lion[1]) + "\n{\"image\": \"x.jpg\", \"question\": 3,}\n")
    bad = json.loads(json.dumps(lion))
    del bad[1]["question"]
    dump("lion_bad.json", bad)

    dump("caption_results.json", [{"image_id": 391895, "caption": "a man rides a bike"},
                                  {"image_id": 522418, "caption": "a woman with a cake"}])
    dump("vqa_results.json", [{"question_id": 3918950, "answer": "Yes"}, {"question_id": 3918951, "answer": "two"}])
    dump("aokvqa_results.json", [{"question_id": "22jbM6gDxdaMaunuzgrsBB", "answer": "cigarette"},
                                 {"question_id": "abc", "answer": "racket"}])
    dump("rec_results.json", [{"ref_id": 0, "box": "Answer: [0.162,0.702,0.372,1.0]"},
                              {"ref_id": 1, "box": [10, 20, 40, 60.5]}])
    print("reader fixtures written")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    readers()
    captions()
    ptb_stress()
    ptb_random()
    rec()
