#!/usr/bin/env python3
"""The playground (`GET /` of `lion serve`) in a real browser: headless Chromium from Debian
(/usr/bin/chromium, /usr/bin/chromedriver) driven by Selenium (scripts/requirements-ci.txt).

Starts `lion serve --preset tiny --random-weights --init-seed 1 --ram-random tiny --ram-init-seed 1 --addr 127.0.0.1:0`
(loopback, bounded by --timeout), uploads a picture, asks each task (caption, VQA, grounding,
tags) and checks that the page shows what the server answers to the same request made directly
(the text, the box or "no box", the tags with scores, the timing); then a drag-and-drop of
another picture and an error message from the server. Screenshots go to --screens
(target/playground-screens by default).

    PY=$(scripts/venv-ci.sh); $PY scripts/playground_browser_test.py --lion target/debug/lion
"""

import argparse
import os
import shutil
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_harness import Checks, Server, default_paths, png  # noqa: E402

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

DROP_JS = """
const [b64, name] = arguments;
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const file = new File([bytes], name, {type: "image/png"});
const dt = new DataTransfer();
dt.items.add(file);
const zone = document.getElementById("drop-zone");
for (const type of ["dragover", "drop"]) {
  zone.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
}
"""


def browser(chromium, driver):
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1100,820", "--no-first-run", "--disable-extensions"):
        opts.add_argument(a)
    return webdriver.Chrome(options=opts, service=Service(executable_path=driver))


def main():
    import base64
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lion, minilm = default_paths(root)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lion", default=lion)
    ap.add_argument("--embed-model", default=minilm)
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--chromedriver",
                    default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    ap.add_argument("--screens", default=os.path.join(root, "target", "playground-screens"))
    ap.add_argument("--timeout", type=int, default=600, help="whole run, seconds")
    args = ap.parse_args()
    signal.signal(signal.SIGALRM, lambda *_: sys.exit(f"timed out after {args.timeout} s"))
    signal.alarm(args.timeout)
    args.screens = os.path.abspath(args.screens)  # the browser needs absolute file paths
    os.makedirs(args.screens, exist_ok=True)
    picture = png(160, 120, box=(30, 20, 100, 80))
    pic_path = os.path.join(args.screens, "picture.png")
    with open(pic_path, "wb") as f:
        f.write(picture)

    c = Checks("playground browser test")
    with Server(args.lion, args.embed_model, ["--max-new-tokens", "24"]) as srv:
        d = browser(args.chromium, args.chromedriver)
        try:
            wait = WebDriverWait(d, 180)
            d.get(srv.base + "/")
            c.equal(d.title, "LION playground", "page title")
            wait.until(lambda d: "models for" in d.find_element(By.ID, "health").text)
            c.check("tags" in d.find_element(By.ID, "health").text, "health lists tags")
            d.find_element(By.ID, "image-input").send_keys(pic_path)
            status = lambda: d.find_element(By.ID, "status")  # noqa: E731
            wait.until(lambda d: status().get_attribute("data-state") == "ready")
            c.check("160×120" in status().text, f"image size shown: {status().text}")
            _, tags_direct = srv.post_form("/v1/tags", {}, picture)

            def ask(task, text=None, shot=None):
                Select(d.find_element(By.ID, "task")).select_by_value(task)
                box = d.find_element(By.ID, "text")
                if box.is_displayed():
                    box.clear()
                if text is not None:
                    box.send_keys(text)
                d.find_element(By.ID, "run").click()
                wait.until(lambda d: status().get_attribute("data-state") in ("done", "error"))
                d.save_screenshot(os.path.join(args.screens, f"{shot or task}.png"))
                return {
                    "state": status().get_attribute("data-state"),
                    "answer": d.find_element(By.ID, "answer").get_attribute("textContent"),
                    "box": d.find_element(By.ID, "box").text,
                    "drawn": d.find_element(By.ID, "canvas").get_attribute("data-box"),
                    "timing": d.find_element(By.ID, "timing").text,
                    "error": d.find_element(By.ID, "error").text,
                    "tags": [(r.find_elements(By.TAG_NAME, "td")[0].text,
                              r.find_elements(By.TAG_NAME, "td")[1].text)
                             for r in d.find_elements(By.CSS_SELECTOR, "#tags tbody tr")],
                }

            want_tags = [(t["tag"], f"{t['score']:.3f}") for t in tags_direct["tags"]]
            for task, field, text, key in [
                ("caption", None, None, "caption"),
                ("vqa", "question", "what is in the middle?", "answer"),
                ("ground", "expression", "the red rectangle", "text"),
            ]:
                page = ask(task, text)
                c.equal(page["state"], "done", f"{task}: finished ({page['error']})")
                _, direct = srv.post_form(f"/v1/{task}", {field: text} if field else {}, picture)
                c.equal(page["answer"], direct[key], f"{task}: page shows the server's answer")
                c.check(page["timing"].startswith(f"time: {task}: ") and " ms" in page["timing"],
                        f"{task}: timing shown: {page['timing']!r}")
                c.equal(page["tags"], want_tags, f"{task}: tags with scores = /v1/tags")
                if task == "ground":
                    if direct["bbox"]:
                        want = ",".join(f"{v:.1f}" for v in direct["bbox"])
                        c.equal(page["drawn"], want, "ground: box drawn where the server says")
                        c.check(page["box"].startswith("box (pixels)"), "ground: box text")
                    else:
                        c.equal(page["box"], "no box in the answer", "ground: no box said")
                        c.equal(page["drawn"], "", "ground: nothing drawn")
            page = ask("tags")
            c.equal(page["tags"], want_tags, "tags task: the table = /v1/tags")
            c.check(len(want_tags) > 0, "the random tagger gives some tags")
            c.equal(page["answer"], ", ".join(t for t, _ in want_tags), "tags task: answer line")

            # the server's error message reaches the page
            page = ask("vqa", "", shot="error")
            c.equal(page["state"], "error", "vqa without a question fails")
            c.check("missing field `question`" in page["error"] and "422" in page["error"],
                    f"error shown: {page['error']!r}")

            # drag and drop of another picture
            other = png(90, 60, box=(5, 5, 40, 30))
            d.execute_script(DROP_JS, base64.b64encode(other).decode(), "dropped.png")
            wait.until(lambda d: "dropped.png" in status().text)
            c.check("90×60" in status().text, f"dropped image: {status().text}")
            page = ask("caption", shot="dropped")
            _, direct = srv.post_form("/v1/caption", {}, other)
            c.equal(page["answer"], direct["caption"], "caption of the dropped picture")
            logs = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"
                    and "/v1/vqa" not in e.get("message", "")]
            c.equal(logs, [], "no browser console errors (besides the expected 422)")
        finally:
            d.quit()
    print(f"screenshots in {args.screens}")
    c.finish()


if __name__ == "__main__":
    main()
