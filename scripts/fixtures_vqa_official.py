"""Goldens from the OFFICIAL VQA and A-OKVQA evaluation code (never run in CI; Python only here).

Writes tests/fixtures/metrics/:
  vqa_official.json     3,000+ adversarial (prediction, 10 answers) questions scored by the
                        unmodified GT-Vision-Lab/VQA evaluation (vqaEval.py + vqa.py), in several
                        independent evaluation runs: overall, per answer type, per question type
                        (the official `accuracy` dict, rounded as it rounds) and every question's
                        `evalQA` plus its unrounded accuracy.
  aokvqa_official.json  500+ A-OKVQA questions and predictions scored by allenai/aokvqa
                        evaluation/eval_predictions.py (`eval_aokvqa`, multiple choice and direct
                        answer), per run and per question.

The official code is loaded from checkouts passed on the command line (not vendored):
  git clone https://github.com/GT-Vision-Lab/VQA       # used: a013f0043c1e2cdc995922dfe257f7149aa9af06
  git clone https://github.com/allenai/aokvqa          # used: 83786de0b24c4fef0bfe39420684f6f73d9f3581
  PY=~/.cache/lion-rs/venv/bin/python   # Python 3.11.7 made the committed goldens
  $PY scripts/fixtures_vqa_official.py --vqa VQA --aokvqa aokvqa
A fresh set (another seed, not in the goldens) scored by the official code and by a lion binary:
  $PY scripts/fixtures_vqa_official.py --vqa VQA --aokvqa aokvqa --compare-lion target/debug/lion --seed 5

The shim (what is changed to run the Python 2 VQA files under Python 3; nothing else is touched):
  1. `print X` statements become `print(X)` calls (a line whose first word is `print`);
  2. leading indentation is expanded with tabs to multiples of 8 columns, which is how Python 2
     read these files (vqa.py mixes a space and tabs, which Python 3 rejects).
The scoring code (processPunctuation, processDigitArticle, evaluate, setAccuracy, loadRes) runs as
written. eval_predictions.py is Python 3 already and is imported as it is.

Under Python 3 (what the goldens record) the official code differs from its Python 2 self in three
places that lion reproduces the Python 3 way: round() ties go to even, `\\d` matches every Unicode
decimal digit, and str.lower() uses the full Unicode case mapping.
"""
import argparse
import contextlib
import io
import json
import os
import random
import re
import sys
import tempfile
import types

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "metrics")


def shim(path):
    """The Python 2 source of `path`, runnable by Python 3 (see the module doc)."""
    out = []
    for line in open(path, encoding="utf-8").read().splitlines():
        body = line.lstrip(" \t")
        lead = line[: len(line) - len(body)].expandtabs(8)
        m = re.match(r"print\b\s*(.*)$", body)
        if m and not body.startswith("print("):
            body = f"print({m.group(1)})"
        out.append(lead + body)
    return "\n".join(out) + "\n"


def load_module(name, path):
    mod = types.ModuleType(name)
    mod.__file__ = path
    exec(compile(shim(path), path, "exec"), mod.__dict__)
    sys.modules[name] = mod
    return mod


# ----------------------------------------------------------------------------------------------
# adversarial VQA cases
# ----------------------------------------------------------------------------------------------

PUNCT = [';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
         '?', '!']
POOLS = {
    "yes/no": ["yes", "no", "Yes", "NO", "yes.", "no!", "yes, it is", "nope", "yeah", "maybe"],
    "number": ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "12", "100", "1,000", "1.5",
               "3.5", "0.5", ".5", "3.", "2 1/2", "none", "zero", "one", "two", "three", "four",
               "five", "six", "seven", "eight", "nine", "ten", "eleven", "Two", "TEN", "10:30",
               "1,5", "٣", "٣,٤", "٣.٥", "１２", "2nd", "1st place"],
    "other": ["red", "white and blue", "tennis", "the kitchen", "a dog", "an apple", "frisbee",
              "t-shirt", "t shirt", "tshirt", "don't know", "dont", "cant", "can't", "isnt", "it's",
              "its", "o'clock", "oclock", "st. louis", "mr. smith", "u.s.", "us", "1:30",
              "left/right", "left right", "black & white", "rock'n'roll", "10:30 pm", "2.5 ft",
              "e.g.", "...", "n/a", "na", "yes!", "(left)", "[right]", "{x}", '"stop"', "stop",
              "sign's", "Café", "café", "naïve", "İstanbul", "ΣΟΦΟΣ", "σοφος", "straße", "STRASSE",
              "😀", "", " ", "a", "the", "an", "a the", "one two", "somebody'd", "somebodyd", "Im",
              "i'm", "ive", "hes", "he's", "whats", "what's", "youre", "yall", "y'all", "twas",
              "Id've", "ow's'at", "black_white", "x=y", "a+b", "c#", "@home", "`quoted`", "<tag>",
              "semi;colon", "back\\slash", "a - b", "a -b", "well-known", "hot dog", "hotdog",
              "hot dogs", "man's", "mans", "the man's hat", "An Apple", "THE END", "end."],
}
QTYPES = {
    "yes/no": ["is the", "are there", "is this", "does the", "is it", "can you", "none of the above"],
    "number": ["how many", "how many people are", "what number is", "what time"],
    "other": ["what color is the", "what is the", "what sport is", "where is the", "what is",
              "why", "which", "none of the above", "what kind of"],
}
WORDS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
         "7": "seven", "8": "eight", "9": "nine", "10": "ten"}
WS = [" ", "  ", "\n", "\t", "\r", "\xa0", "\u2003", "\x1c", "\u200b", " \n ", "\t\t"]


def perturb(rng, s, depth=None):
    """A variant of answer `s` that a model or an annotator could write."""
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3]) if depth is None else depth):
        k = rng.randrange(17)
        if k == 0:
            s = s.upper()
        elif k == 1:
            s = s.title()
        elif k == 2:
            s = s.lower()
        elif k == 3:
            q = rng.choice(['"', "'", "“", "`", "("])
            s = q + s + {"(": ")", "“": "”"}.get(q, q)
        elif k == 4:
            s = s + rng.choice([".", "!", "?", ",", ";", ":", "...", " .", ". ", "!!", ".\n"])
        elif k == 5:
            s = rng.choice(["a ", "an ", "the ", "The ", "A ", "the the "]) + s
        elif k == 6:
            w = s.split()
            for i, t in enumerate(w):
                if t in WORDS and rng.random() < 0.7:
                    w[i] = WORDS[t]
                elif t.lower() in WORDS.values() and rng.random() < 0.7:
                    w[i] = [d for d, x in WORDS.items() if x == t.lower()][0]
            s = " ".join(w) if w else s
        elif k == 7:
            p = rng.choice(PUNCT + [".", "'"])
            i = rng.randint(0, len(s))
            s = s[:i] + rng.choice([p, " " + p, p + " ", " " + p + " "]) + s[i:]
        elif k == 8:
            s = rng.choice(WS) + s + rng.choice(WS)
        elif k == 9:
            i = rng.randint(0, len(s))
            s = s[:i] + rng.choice(WS) + s[i:]
        elif k == 10:
            s = s.replace("'", "") if "'" in s else s.replace("nt", "n't", 1)
        elif k == 11:
            s = s + "." * rng.choice([31, 32, 33, 40])
        elif k == 12:
            s = ". " * rng.choice([30, 34]) + s
        elif k == 13:
            s = s + rng.choice([" 1,0", " 3.5", " 2.", " .5", " 1.2.3", " ٣,٤"])
        elif k == 14:
            s = s.replace(" ", rng.choice(["", "  ", "\t", "-", "_", "/"]))
        elif k == 15:
            s = "".join(c.upper() if rng.random() < 0.5 else c for c in s)
        else:
            s = rng.choice(["", " ", "\n", "yes", "0", "none", "the", "somebody'd"])
    return s


def gt_answers(rng, at):
    """(answers, field mode): ten answer strings and how their records are filled."""
    pool = POOLS[at]
    base = rng.choice(pool)
    r = rng.random()
    if r < 0.22:
        v = perturb(rng, base, depth=rng.choice([0, 0, 1]))
        answers = [v] * 10
    elif r < 0.3:
        # the same string up to whitespace that the official code strips
        answers = [rng.choice(["", " ", "\n", "\t"]) + base + rng.choice(["", " ", "\n"]) for _ in range(10)]
    else:
        n_main = rng.choice([9, 8, 7, 6, 5, 4, 3, 3, 2, 1])
        answers = [perturb(rng, base, depth=rng.choice([0, 0, 0, 1])) for _ in range(n_main)]
        answers += [perturb(rng, rng.choice(pool), depth=rng.choice([0, 0, 1])) for _ in range(10 - n_main)]
        rng.shuffle(answers)
    return base, answers


def records(rng, answers):
    """Answer records; mostly as VQA v2 writes them, some with the fields that make the
    official whole-record comparison matter."""
    r = rng.random()
    conf = [rng.choice(["yes", "yes", "maybe", "no"]) for _ in answers]
    if r < 0.84:
        return [{"answer": a, "answer_confidence": c, "answer_id": i + 1} for i, (a, c) in enumerate(zip(answers, conf))]
    if r < 0.88:
        return [{"answer": a, "answer_confidence": c} for a, c in zip(answers, conf)]
    if r < 0.92:
        return [{"answer": a} for a in answers]
    if r < 0.96:
        recs = [{"answer": a, "answer_confidence": c, "answer_id": i + 1} for i, (a, c) in enumerate(zip(answers, conf))]
        j = rng.randrange(9)
        recs[j + 1] = dict(recs[j])
        recs[j + 1]["answer"] = answers[j + 1] if rng.random() < 0.5 else recs[j]["answer"]
        recs[j + 1]["answer_id"] = recs[j]["answer_id"]
        return recs
    # ids written as floats, booleans or strings: Python compares 1 == 1.0 == True, not "1"
    kinds = [lambda i: float(i), lambda i: i, lambda i: str(i), lambda i: True if i == 1 else i]
    f = rng.choice(kinds)
    recs = [{"answer": a, "answer_confidence": c, "answer_id": f(i % 5 + 1) if rng.random() < 0.5 else i % 5 + 1}
            for i, (a, c) in enumerate(zip(answers, conf))]
    return recs


def prediction(rng, base, answers, at):
    r = rng.random()
    if r < 0.45:
        return perturb(rng, base)
    if r < 0.65:
        return perturb(rng, rng.choice(answers))
    if r < 0.85:
        return perturb(rng, rng.choice(POOLS[at]))
    return rng.choice(["", " ", "\n\t", "The dog.", "two dogs", "\tyes\n", "an apple", "It is a cat!",
                       "ten", "a" + "." * 40, "N/A", "1,5", "what?", "yes, it is", "none", "3.", ".5",
                       "Yes", "YES", '"yes"', "yes.", "No.", "Two", "the two", "2.", "two.", "'two'",
                       "10.", "one hundred", "😀", "ΣΟΦΟΣ", "İ", "dont know", "I don't know", "Im"])


def vqa_run(rng, n, qid0):
    anns, preds = [], []
    for i in range(n):
        at = rng.choice(["yes/no", "number", "other", "other"])
        base, answers = gt_answers(rng, at)
        qid = qid0 + i
        anns.append({"question_id": qid, "image_id": 1000 + qid // 3, "answer_type": at,
                     "question_type": rng.choice(QTYPES[at]), "answers": records(rng, answers),
                     "multiple_choice_answer": answers[0]})
        preds.append({"question_id": qid, "answer": prediction(rng, base, answers, at)})
    return anns, preds


def tie_run():
    """32 questions, one right: 100 * 1 / 32 = 3.125 exactly, a tie that Python 3's round()
    sends to 3.12 (Python 2 to 3.13)."""
    anns, preds = [], []
    for i in range(32):
        anns.append({"question_id": 9000000 + i, "image_id": 1, "answer_type": "yes/no" if i % 2 else "other",
                     "question_type": "is the",
                     "answers": [{"answer": "yes", "answer_confidence": "yes", "answer_id": j + 1} for j in range(10)]})
        preds.append({"question_id": 9000000 + i, "answer": "yes" if i == 0 else "no"})
    return anns, preds


def run_official(VQA, VQAEval, anns, preds):
    with tempfile.TemporaryDirectory() as d:
        qf, rf = os.path.join(d, "q.json"), os.path.join(d, "r.json")
        qs = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "val2014",
              "license": {}, "questions": [{"question_id": a["question_id"], "image_id": a["image_id"],
                                            "question": "?"} for a in anns]}
        json.dump(qs, open(qf, "w"))
        json.dump(preds, open(rf, "w"))
        af = os.path.join(d, "a.json")
        json.dump({"annotations": anns}, open(af, "w"))
        with contextlib.redirect_stdout(io.StringIO()):
            vqa = VQA(af, qf)
            res = vqa.loadRes(rf, qf)
            ev = VQAEval(vqa, res, n=2)
            ev.evaluate()
    return ev


CONF = {"y": "yes", "m": "maybe", "n": "no"}


def compact_answers(recs):
    """Answer records in a compact form: [answers, confidences, ids]. answers: the ten strings, or
    one string when all ten are equal; confidences: answer_confidence by first letter (y=yes
    m=maybe n=no), null when the records have none; ids: left out when answer_id is 1..10, null
    when the records have none, else the list as it is (floats, strings, booleans kept)."""
    a = [r["answer"] for r in recs]
    out = [a[0] if len(recs) == 10 and len(set(a)) == 1 else a,
           "".join(r["answer_confidence"][0] for r in recs) if "answer_confidence" in recs[0] else None]
    if not all(type(r.get("answer_id")) is int and r["answer_id"] == i + 1 for i, r in enumerate(recs)):
        out.append([r["answer_id"] for r in recs] if "answer_id" in recs[0] else None)
    assert expand_answers(out) == recs and all(
        type(x.get("answer_id")) is type(r.get("answer_id")) for x, r in zip(expand_answers(out), recs))
    return out


def expand_answers(c):
    a = [c[0]] * 10 if isinstance(c[0], str) else c[0]
    recs = [{"answer": x} for x in a]
    for i, r in enumerate(recs):
        if c[1] is not None:
            r["answer_confidence"] = CONF[c[1][i]]
        ids = c[2] if len(c) > 2 else list(range(1, len(a) + 1))
        if ids is not None:
            r["answer_id"] = ids[i]
    return recs


def vqa_goldens(vqa_dir):
    VQA = load_module("vqa", os.path.join(vqa_dir, "PythonHelperTools", "vqaTools", "vqa.py")).VQA
    VQAEval = load_module("vqaEval", os.path.join(
        vqa_dir, "PythonEvaluationTools", "vqaEvaluation", "vqaEval.py")).VQAEval
    rng = random.Random(2024)
    runs = [vqa_run(rng, 1300, 1), vqa_run(rng, 1100, 100000), vqa_run(rng, 700, 200000),
            vqa_run(rng, 37, 300000), tie_run()]
    out = []
    total = 0
    for anns, preds in runs:
        ev = run_official(VQA, VQAEval, json.loads(json.dumps(anns)), preds)
        total += len(anns)
        pred = {p["question_id"]: p["answer"] for p in preds}
        qs = [[a["question_id"], a["answer_type"], a["question_type"], pred[a["question_id"]],
               ev.evalQA[a["question_id"]], compact_answers(a["answers"])] for a in anns]
        out.append({"accuracy": ev.accuracy, "questions": qs})
        print(f"vqa run: {len(anns)} questions, official overall {ev.accuracy['overall']}, "
              f"per answer type {ev.accuracy['perAnswerType']}")
    with open(os.path.join(OUT, "vqa_official.json"), "w") as f:
        json.dump({"source": "GT-Vision-Lab/VQA@a013f00 vqaEval.py + vqa.py under Python "
                             f"{sys.version.split()[0]} (print/indent shim only), "
                             "scripts/fixtures_vqa_official.py",
                   "question": "[question_id, answer_type, question_type, prediction, evalQA, answers]",
                   "answers": "[answers, confidences, ids]: see compact_answers() in the script",
                   "runs": out}, f, separators=(",", ":"), ensure_ascii=False)
    print(f"vqa: {total} questions in {len(out)} runs")


# ----------------------------------------------------------------------------------------------
# A-OKVQA
# ----------------------------------------------------------------------------------------------

AOK_POOL = ["dog", "dogs", "Dog", "dog.", " dog", "cat", "red", "Red", "two", "2", "frisbee", "tennis",
            "the kitchen", "kitchen", "", "yes", "baseball bat", "bat", "😀", "café"]


def aokvqa_run(rng, n, prefix):
    data, preds = [], {}
    for i in range(n):
        qid = f"{prefix}{i:05d}"
        choices = rng.sample(AOK_POOL, 4)
        ci = rng.randrange(4)
        base = choices[ci]
        da = [base if rng.random() < rng.choice([0.2, 0.5, 0.9]) else rng.choice(AOK_POOL) for _ in range(10)]
        data.append({"split": "val", "image_id": i, "question_id": qid, "question": "?",
                     "choices": choices, "correct_choice_idx": ci, "direct_answers": da,
                     "difficult_direct_answer": rng.random() < 0.15, "rationales": []})
        p = {}
        r = rng.random()
        if r < 0.9:
            p["multiple_choice"] = rng.choice(choices) if rng.random() < 0.85 else rng.choice(AOK_POOL)
        if rng.random() < 0.9:
            p["direct_answer"] = rng.choice(da) if rng.random() < 0.6 else rng.choice(AOK_POOL)
        if p or rng.random() < 0.5:
            preds[qid] = p
    # predictions for questions that are not in the dataset (the official code ignores them)
    preds[f"{prefix}extra"] = {"multiple_choice": "dog", "direct_answer": "dog"}
    return data, preds


def aokvqa_goldens(aok_dir):
    sys.path.insert(0, aok_dir)
    sys.path.insert(0, os.path.join(aok_dir, "evaluation"))
    from eval_predictions import eval_aokvqa
    rng = random.Random(77)
    out = []
    total = 0
    for n, prefix in [(320, "a"), (240, "b"), (3, "c")]:
        data, preds = aokvqa_run(rng, n, prefix)
        total += n
        mc = {q: p["multiple_choice"] for q, p in preds.items() if "multiple_choice" in p}
        da = {q: p["direct_answer"] for q, p in preds.items() if "direct_answer" in p}
        run = {"dataset": [[d["question_id"], d["choices"], d["correct_choice_idx"], d["direct_answers"],
                            d["difficult_direct_answer"]] for d in data],
               "predictions": preds,
               "mc": eval_aokvqa(data, mc, multiple_choice=True, strict=False),
               "da": eval_aokvqa(data, da, multiple_choice=False, strict=False)}
        # per question: the official function on a one-question dataset
        per = []
        for d in data:
            q = d["question_id"]
            m = eval_aokvqa([d], {q: mc[q]} if q in mc else {}, multiple_choice=True, strict=False)
            a = (eval_aokvqa([d], {q: da[q]} if q in da else {}, multiple_choice=False, strict=False)
                 if d["difficult_direct_answer"] is False else None)
            per.append([m, a])
        run["per_question"] = per
        out.append(run)
        print(f"aokvqa run: {n} questions, MC {run['mc']}, DA {run['da']}")
    with open(os.path.join(OUT, "aokvqa_official.json"), "w") as f:
        json.dump({"source": "allenai/aokvqa@83786de evaluation/eval_predictions.py eval_aokvqa "
                             f"(strict=False, as its __main__), Python {sys.version.split()[0]}, "
                             "scripts/fixtures_vqa_official.py",
                   "dataset": "[question_id, choices, correct_choice_idx, direct_answers, "
                              "difficult_direct_answer] (split val, question and image id are not scored)",
                   "per_question": "[MC, DA] of eval_aokvqa on the one-question dataset (DA null: difficult)",
                   "runs": out}, f, separators=(",", ":"), ensure_ascii=False)
    print(f"aokvqa: {total} questions in {len(out)} runs")


def compare_lion(vqa_dir, aok_dir, lion, seed, n):
    """A fresh set (seed not used by the goldens), written as VQA v2 / A-OKVQA files, scored by
    the official code and by `lion eval`; every number must agree (nothing is written to OUT)."""
    import subprocess
    VQA = load_module("vqa", os.path.join(vqa_dir, "PythonHelperTools", "vqaTools", "vqa.py")).VQA
    VQAEval = load_module("vqaEval", os.path.join(
        vqa_dir, "PythonEvaluationTools", "vqaEvaluation", "vqaEval.py")).VQAEval
    rng = random.Random(seed)
    anns, preds = vqa_run(rng, n, 7000000)
    ev = run_official(VQA, VQAEval, json.loads(json.dumps(anns)), preds)
    with tempfile.TemporaryDirectory() as d:
        af, pf, of = (os.path.join(d, x) for x in ["ann.json", "pred.json", "out.json"])
        json.dump({"annotations": anns}, open(af, "w"))
        json.dump(preds, open(pf, "w"))
        subprocess.run([lion, "eval", "--task", "vqa", "--gt", af, "--pred", pf, "--json", of],
                       check=True, stdout=subprocess.DEVNULL)
        ours = json.load(open(of))
    o = ours["overall"]["official"]
    bad = [k for k in ["overall"] if abs(o[k] - ev.accuracy[k]) > 1e-9]
    for key in ["perAnswerType", "perQuestionType"]:
        assert set(o[key]) == set(ev.accuracy[key]), key
        bad += [f"{key} {t}" for t in o[key] if abs(o[key][t] - ev.accuracy[key][t]) > 1e-9]
    items = [i for i in ours["per_item"] if abs(i["official"] - ev.evalQA[int(i["question_id"])]) > 1e-9]
    print(f"fresh VQA set (seed {seed}, {n} questions): official overall {ev.accuracy['overall']}, "
          f"lion {o['overall']}; {len(bad)} aggregate and {len(items)} per-question differences")
    sys.path.insert(0, aok_dir)
    sys.path.insert(0, os.path.join(aok_dir, "evaluation"))
    from eval_predictions import eval_aokvqa
    data, apreds = aokvqa_run(rng, n // 2, "fresh")
    mc = {q: p["multiple_choice"] for q, p in apreds.items() if "multiple_choice" in p}
    da = {q: p["direct_answer"] for q, p in apreds.items() if "direct_answer" in p}
    want = (eval_aokvqa(data, mc, multiple_choice=True, strict=False),
            eval_aokvqa(data, da, multiple_choice=False, strict=False))
    with tempfile.TemporaryDirectory() as d:
        gf, pf, of = (os.path.join(d, x) for x in ["aok.json", "pred.json", "out.json"])
        json.dump(data, open(gf, "w"))
        json.dump(apreds, open(pf, "w"))
        subprocess.run([lion, "eval", "--task", "aokvqa", "--gt", gf, "--pred", pf, "--json", of],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        o = json.load(open(of))["overall"]
    got = (o["multiple_choice"]["accuracy"], o["direct_answer"]["accuracy"])
    print(f"fresh A-OKVQA set ({n // 2} questions): official MC {want[0]} DA {want[1]}, lion MC {got[0]} DA {got[1]}")
    ok = not bad and not items and all(abs(a - b) <= 1e-9 for a, b in zip(want, got))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--vqa", required=True, help="a checkout of github.com/GT-Vision-Lab/VQA")
    ap.add_argument("--aokvqa", required=True, help="a checkout of github.com/allenai/aokvqa")
    ap.add_argument("--compare-lion", metavar="LION_BIN",
                    help="instead of writing goldens: score a fresh set with the official code and "
                         "with `LION_BIN eval`, and compare")
    ap.add_argument("--seed", type=int, default=31337)
    ap.add_argument("-n", type=int, default=2000)
    args = ap.parse_args()
    if args.compare_lion:
        compare_lion(args.vqa, args.aokvqa, args.compare_lion, args.seed, args.n)
    else:
        os.makedirs(OUT, exist_ok=True)
        vqa_goldens(args.vqa)
        aokvqa_goldens(args.aokvqa)
