"""The page in English and Traditional Chinese: the catalogs, the class names, engine errors and
the decoder's notes worded by their code, a third language added as one file (with its class
names), and the page itself rendered in zh-Hant with no English left in the main area
(AppTest)."""

from __future__ import annotations

import ast
import csv
import io
import json
import re
import string
from pathlib import Path

import numpy as np
import pytest
from google.protobuf.json_format import MessageToDict
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.conftest import ASSETS
from vitviz import errors, methods, models
from vitviz.inputs.images import NOTES, Note, decode_image
from vitviz.ui import canvas, i18n, resources
from vitviz.ui.lesson.steps import STEPS
from vitviz.ui.views import VIEWS, slug

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
UI = ROOT / "vitviz" / "ui"


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def test_every_catalog_has_the_same_keys_and_placeholders():
    assert list(i18n.languages()) == ["en", "zh-Hant"]
    en = i18n.catalog("en")
    for lang in i18n.languages():
        other = i18n.catalog(lang)
        assert set(other) == set(en), lang
        for key in en:
            assert _fields(en[key]) == _fields(other[key]), (lang, key)
            assert other[key].strip(), (lang, key)


def _error_classes() -> dict[str, type[errors.VitvizError]]:
    found, todo = {}, [errors.VitvizError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found


def raised_error_codes() -> set[str]:
    """Every error code vitviz/ can raise: each error class it constructs (its class's code)
    and every ``code="..."`` a construction passes."""
    classes, codes = _error_classes(), set()
    for path in (ROOT / "vitviz").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name not in classes:
                continue
            given = [k.value for k in node.keywords if k.arg == "code"]
            if not given:
                codes.add(classes[name].code)
            for value in given:
                assert isinstance(value, ast.Constant), f"{path}:{node.lineno}: code= not literal"
                codes.add(value.value)
    return codes


def test_every_error_code_raised_has_words_in_every_language():
    codes = raised_error_codes()
    assert {"image_too_large", "options", "memory_refused", "memory_busy"} <= codes
    for lang in i18n.languages():
        missing = {c for c in codes if f"error_code.{c}" not in i18n.catalog(lang)}
        assert missing == set(), (lang, missing)


def test_errors_are_worded_by_their_code_not_their_english():
    from vitviz.errors import ImageError, ImageTooLarge, OptionsError, VitvizError

    # the same English words under different codes read differently; the English is the detail
    assert i18n.error_text(ImageError("x"), "zh-Hant") == "無法讀取這張圖片：x"
    assert i18n.error_text(ImageTooLarge("x"), "zh-Hant") == "這張圖片太大了：x"
    assert i18n.error_text(VitvizError("x", code="image"), "zh-Hant") == "無法讀取這張圖片：x"
    assert i18n.error_text(OptionsError("layer 99 of 12"), "en") == "layer 99 of 12"
    assert i18n.error_text(ValueError("boom"), "zh-Hant") == "發生錯誤：boom"
    # a code no catalog knows: the English message, made safe for Markdown
    assert i18n.error_text(VitvizError("a *b*", code="plugin_thing"), "zh-Hant") == r"a \*b\*"
    # the English message stays exactly as raised (the CLI and the server print it)
    assert str(ImageTooLarge("too big")) == "too big"
    assert ImageTooLarge("x").code == "image_too_large"


def test_a_language_is_one_catalog_file(tmp_path, monkeypatch):
    """A toy third language: one file beside the others, chosen for its tag, used by t; its
    class names are one table its ``[locale]`` table names. Nothing else is edited."""
    locales, assets = tmp_path / "locales", tmp_path / "assets"
    locales.mkdir()
    assets.mkdir()
    for lang in i18n.languages():
        (locales / f"{lang}.toml").write_bytes((i18n.LOCALES / f"{lang}.toml").read_bytes())
        for name in i18n.locale_info(lang).get("class_files", ()):
            (assets / name).parent.mkdir(parents=True, exist_ok=True)
            (assets / name).write_bytes((ASSETS / name).read_bytes())
    demo = models.load_model("demo", device="cpu").labels
    rows = ["index\tenglish\tfr", "281\ttabby, tabby cat\tchat tigré"]
    rows += [f"{i}\t{label}\t{label} en français" for i, label in enumerate(demo)]
    (assets / "classes-fr.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    toy = (i18n.LOCALES / "en.toml").read_text(encoding="utf-8")
    toy = toy.replace('name = "English"', 'name = "Français"\nclass_files = ["classes-fr.tsv"]', 1)
    toy = toy.replace('cmyk = "CMYK converted to RGB"', 'cmyk = "CMYK converti en RVB"', 1)
    toy = toy.replace('image = "{detail}"', 'image = "Image illisible : {detail}"', 1)
    title = i18n.catalog("en")["page.title"]
    toy = toy.replace(f'title = "{title}"', 'title = "vitviz — que regarde le ViT ?"', 1)
    (locales / "fr.toml").write_text(toy, encoding="utf-8")
    monkeypatch.setattr(i18n, "LOCALES", locales)
    monkeypatch.setattr(i18n, "ASSETS", assets)
    assert i18n.languages() == {"en": "English", "fr": "Français", "zh-Hant": "中文"}
    assert i18n.from_locale("fr-CA") == i18n.from_locale("fr") == "fr"
    assert i18n.from_locale("zh-TW") == "zh-Hant" and i18n.from_locale("de") == "en"
    assert i18n.t("page.title", "fr") == "vitviz — que regarde le ViT ?"
    assert i18n.error_text(errors.ImageError("x"), "fr") == "Image illisible : x"
    assert i18n.decoder_note(Note("cmyk"), "fr") == "CMYK converti en RVB"
    assert i18n.class_name("tabby, tabby cat", "fr") == "chat tigré"
    assert i18n.class_label("tabby, tabby cat", 281, both=True, lang="fr") == "chat tigré · tabby"
    assert i18n.class_name("tabby, tabby cat", "en") is None  # English names no classes
    assert i18n.class_name("tabby, tabby cat", "zh-Hant") == "虎斑貓"  # the others still do
    # the page offers it and speaks it when a link names it
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["lang"] = "fr"
    at.run()
    assert not at.exception
    assert at.session_state["lang"] == "fr"
    assert at.segmented_control(key="lang").options == ["English", "Français", "中文"]
    assert any("que regarde le ViT" in m.value for m in at.markdown)
    # the demo model's prediction is named in the toy language
    bars = [MessageToDict(p.proto).get("text", "") for p in at.get("progress")]
    assert bars and all("en français" in bar for bar in bars), bars


def test_every_note_code_has_words_in_every_language():
    for lang in i18n.languages():
        missing = {c for c in NOTES if f"note.{c}" not in i18n.catalog(lang)}
        assert missing == set(), (lang, missing)
    # the English catalog says what the CLI prints, with the same fields
    for code, english in NOTES.items():
        assert i18n.catalog("en")[f"note.{code}"] == english, code


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def noted_images() -> dict[str, bytes]:
    """Files whose decoding leaves notes: CMYK, 16-bit with a transparent value, transparent
    RGBA, animated GIF (a note with fields), EXIF-rotated JPEG (another)."""
    sixteen = np.tile(np.array([7, 300, 65535, 40000], dtype=np.uint16), (32, 8))
    alpha = Image.new("RGBA", (32, 32), (255, 0, 0, 255))
    alpha.paste((0, 0, 0, 0), (0, 0, 16, 32))
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "cmyk.jpg": encoded(Image.new("CMYK", (32, 32), (255, 0, 0, 0)), "JPEG"),
        "deep.png": encoded(Image.fromarray(sixteen), "PNG", transparency=7),
        "alpha.png": encoded(alpha, "PNG"),
        "anim.gif": encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "phone.jpg": encoded(Image.new("RGB", (40, 32), (0, 0, 255)), "JPEG", exif=exif.tobytes()),
    }


# format names and acronyms the notes keep in every language
NOTE_NAMES = {"CMYK", "RGB", "EXIF", "TIFF", "JPEG", "GIF", "PNG", "WebP"}


def test_decoded_notes_read_in_chinese_with_no_english():
    seen = set()
    for name, data in noted_images().items():
        notes = decode_image(data, name).notes
        assert notes, name
        for note in notes:
            seen.add(note.code)
            zh = i18n.decoder_note(note, "zh-Hant")
            assert zh == i18n.t(f"note.{note.code}", "zh-Hant", **note.fields)
            assert set(re.findall(r"[A-Za-z]+", zh)) <= NOTE_NAMES, (name, zh)
            assert i18n.decoder_note(note, "en") == str(note)
    assert {"cmyk", "sixteen_bit", "transparency", "animated", "exif_rotated"} <= seen


def test_the_page_shows_an_uploads_notes_in_chinese():
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["lang"] = "zh-Hant"
    at.run()
    at.radio(key="source").set_value("Upload").run()
    for name, data in noted_images().items():
        at.file_uploader(key="upload").set_value((name, data, "image/png")).run()
        assert not at.exception and not at.error, name
        want = [i18n.decoder_note(n, "zh-Hant") for n in decode_image(data, name).notes]
        captions = [c.value for c in at.caption]
        assert all(w in captions for w in want), (name, want, captions)
        english = {str(n) for n in decode_image(data, name).notes}
        assert not any(e in c for e in english for c in captions), (name, captions)


def _code_strings(path: Path) -> list[str]:
    """The string constants of a module's code (docstrings left out)."""
    tree = ast.parse(path.read_text(), str(path))
    docs = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
    ]


def test_the_page_matches_no_engine_english():
    """The page words notes and errors by their code: no sentence of the decoder's appears in
    its code (a dict keyed by English, an ``in`` or ``startswith`` test)."""
    english = {text.split("{")[0].strip() for text in NOTES.values()}
    for path in UI.rglob("*.py"):
        found = {s for s in _code_strings(path) for e in english if e and e in s}
        assert found == set(), (path, found)


def test_no_code_names_a_language():
    """A language is its catalog file: no module of vitviz/ special-cases a tag (zh-Hant, its
    column) outside the catalogs; English, the default, is named once (i18n.DEFAULT)."""
    others = {t for t in i18n.languages() if t != i18n.DEFAULT}
    spelled = {v for t in others for v in (t, t.lower(), t.replace("-", "_").lower())}
    for path in (ROOT / "vitviz").rglob("*.py"):
        found = {s for s in _code_strings(path) if s in spelled or s.startswith("zh")}
        assert found == set(), (path, found)


def _families() -> dict[str, list[str]]:
    """Keys the code builds from a name, with every name it can build them from."""
    lesson_kinds = ("random", "demo")
    honest = ["filters", "positions", "attention", "depth", "output"]
    return {
        "model": [f"model.{k}.{f}" for k in models.CURATED for f in ("title", "line")],
        "method": [f"method.{n}" for n in methods.METHODS],
        "option": [
            f"option.{o.name}.{f}"
            for m in methods.METHODS.values()
            for o in m.options
            for f in ("title", "help")
        ],
        "choice": [
            f"choice.{c}" for m in methods.METHODS.values() for o in m.options for c in o.choices
        ],
        "sample": list(resources.SAMPLES.values()),
        "canvas": [f"canvas.{w}" for w in canvas.WORDS],
        "view": [f"view.{slug(v)}" for v in VIEWS],
        "compare": [f"compare.mode_{m}" for m in ("models", "images", "methods")],
        "lesson": [f"lesson.{name}_title" for name, _ in STEPS]
        + [f"lesson.{h}_{k}" for h in honest for k in lesson_kinds]
        + [f"lesson.channel_{i}" for i in range(3)]
        + [f"lesson.strip_{s}" for s in ("patch", "position", "sum")],
        "sidebar": [f"sidebar.source_{s}" for s in ("samples", "upload", "camera", "live")]
        + [f"sidebar.backend_{k}" for k in ("local", "server")],
        "facts": [f"facts.source_{s}" for s in ("file", "cache", "hub", "random", "bundled")],
        "rollout": [f"rollout.source_{s}" for s in ("last", "rollout")]
        + [f"rollout.mask_title_{s}" for s in ("attention", "rollout")],
        "diagram": [f"diagram.readout_{r}" for r in ("cls", "cls_dist", "avg", "avg_prefix")],
        "default": ["default.offline", "default.no_internet"],
        "live": [f"live.method_{m}" for m in ("rollout", "attention", "class")],
        "heads_table": [f"heads_table.kind_{k.replace(' ', '_')}" for k in methods.HEAD_KINDS],
        "error_code": [f"error_code.{c}" for c in raised_error_codes() | {"other"}],
        # what the page's memory budget refused or waited for (vitviz.memory.cost's WorkCost.what)
        "memory": [
            f"memory.{w}" for w in ("explanation", "class_maps", "model", "forward", "live", "work")
        ],
        "note": [f"note.{code}" for code in NOTES],
        "interpolation": [
            f"interpolation.{n}" for n in ("bicubic", "bilinear", "nearest", "area", "lanczos")
        ],
    }


def test_every_catalog_key_is_used_and_every_used_key_exists():
    source = "\n".join(p.read_text() for p in UI.rglob("*.py"))
    literal = set(re.findall(r"""\b(?:t|fill|raw|has)\(\s*['"]([a-z_]+\.[\w.-]+)['"]""", source))
    built = {k for keys in _families().values() for k in keys}
    catalog = set(i18n.catalog("en"))
    assert literal - catalog == set(), "keys used in code but missing from the catalog"
    # keys built from names: all built-in names have words (plugins fall back to theirs)
    missing = {k for k in built if not k.startswith(("option.", "choice.")) and k not in catalog}
    assert missing == set()
    mentioned = set(
        re.findall(r"""['"]([a-z_]+\.[\w.-]+)['"]""", source)
    )  # e.g. in `a if c else b`
    unused = catalog - mentioned - built
    assert unused == set(), "catalog keys nothing uses"


def test_language_follows_the_browser_locale():
    assert i18n.from_locale("zh-TW") == "zh-Hant"
    assert i18n.from_locale("zh-Hant-HK") == "zh-Hant"
    assert i18n.from_locale("zh-HK") == i18n.from_locale("zh_TW") == "zh-Hant"
    assert i18n.from_locale("zh-CN") == i18n.from_locale("zh") == "zh-Hant"  # as before
    assert i18n.from_locale("en-US") == "en"
    assert i18n.from_locale(None) == i18n.from_locale("") == "en"
    assert i18n.from_locale("fr") == "en"


def test_chinese_class_names_cover_imagenet_and_the_demo_model():
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    declared = i18n.locale_info("zh-Hant")  # the language's own table, named by its catalog
    table, column = declared["class_files"][0], declared["class_column"]
    with open(ASSETS / table, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 1000
    for k, row in enumerate(rows):
        assert int(row["index"]) == k and row["wnid"] == info.index_to_label_name(k)
        assert row["english"] == info.index_to_description(k)
    names = [r[column] for r in rows]
    assert len(set(names)) == 1000, "two classes would read the same"
    with_letters = {n for n in names if re.search("[A-Za-z]", n)}
    assert with_letters <= {"T恤", "OK繃", "福特T型車"}
    assert all(re.search(r"[\u4e00-\u9fff]", n) for n in names)
    simplified = set("这个们图块层头为时说国对会车东书长门问间见马鸟鱼龙叶")  # none in zh-Hant
    assert not {c for n in names for c in n} & simplified
    assert i18n.class_name("tabby, tabby cat", "zh-Hant") == "虎斑貓"
    assert i18n.class_name("tabby, tabby cat", "en") is None
    # ImageNet has two "crane" (134 the bird, 517 the machine): the index tells them apart,
    # and without it neither name is guessed
    assert info.index_to_description(134) == info.index_to_description(517) == "crane"
    assert i18n.class_name("crane", "zh-Hant", 134) == rows[134][column] == "鶴"
    assert i18n.class_name("crane", "zh-Hant", 517) == rows[517][column] == "起重機"
    assert i18n.class_name("crane", "zh-Hant") is None
    # another model's label list at the same index is not ImageNet's: by label, not by index
    assert i18n.class_name("tabby, tabby cat", "zh-Hant", 0) == "虎斑貓"
    demo = models.load_model("demo", device="cpu").labels
    assert len(demo) == 8 and all(i18n.class_name(label, "zh-Hant") for label in demo)


def test_class_label_shows_chinese_with_the_english_name_for_search():
    assert i18n.class_label("tabby, tabby cat", lang="zh-Hant") == "虎斑貓"
    assert i18n.class_label("tabby, tabby cat", both=True, lang="zh-Hant") == "虎斑貓 · tabby"
    assert i18n.class_label("tabby, tabby cat", lang="en") == "tabby"
    assert i18n.class_label("class 7", lang="zh-Hant") == "class 7"  # no Chinese name: as is


# ------------------------------------------------------------------ the page in zh-Hant

# Words that stay in Latin letters in the Chinese page: names (of models, methods' authors,
# datasets, file formats, tools) and the symbols of the formulas.
ALLOWED = {
    "vitviz", "ViT", "Transformer", "ImageNet", "DINO", "DINOv", "DeiT", "AugReg", "timm",
    "CLS", "DIST", "REG", "JSON", "PNG", "npz", "nats", "Chefer", "LayerNorm", "softmax",
    "QK", "Attention", "MB", "CNN", "RGB", "Lanczos", "Q", "K", "V", "W", "x", "b", "e", "p",
    "D", "N", "H", "P", "d", "k", "T", "L", "h", "px", "AUC", "Spearman", "CSV", "SVG",
    "Chelsea",  # the sample cat's name
}  # fmt: skip
TEXT_KEYS = {"body", "label", "caption", "text", "options", "placeholder", "help", "content"}
COMPONENT_KEYS = {"title", "value_name", "text", "titles", "prev", "next"}


def _collect(value, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _collect(v, out)
    elif isinstance(value, list):
        for v in value:
            _collect(v, out)


def _texts(proto: dict, out: list[str]) -> None:
    """The words an element shows: labels, bodies, options, captions; a component's texts; a
    chart's titles; a diagram's node labels."""
    for key, value in proto.items():
        if key == "json" and isinstance(value, str):  # a component's data
            data = json.loads(value)
            _collect({k: v for k, v in data.items() if k in COMPONENT_KEYS}, out)
        elif key == "spec" and isinstance(value, str):
            if value.lstrip().startswith("{"):  # plotly
                layout = json.loads(value).get("layout", {})
                _collect([a.get("title") for k, a in layout.items() if k.endswith("axis")], out)
            else:  # graphviz
                out.extend(re.findall(r'label="((?:[^"\\]|\\.)*)"', value))
        elif key in TEXT_KEYS:
            _collect(value, out)
        elif isinstance(value, dict | list):
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, dict):
                    _texts(v, out)


def main_area_words(at: AppTest) -> set[str]:
    """Latin-letter words in the main area (not the sidebar), placeholders and style removed."""
    out: list[str] = []

    def walk(node) -> None:
        children = getattr(node, "children", None)
        if children:
            for child in children.values():
                walk(child)
        elif getattr(node, "proto", None) is not None:
            _texts(MessageToDict(node.proto), out)

    walk(at.main)
    text = " ".join(s for s in out if not s.lstrip().startswith("<style"))
    text = re.sub(r"%?\{[^}]*\}", " ", text)  # placeholders the browser fills
    text = re.sub(r"<br>|\\[a-z]+", " ", text)  # line breaks; LaTeX commands
    return set(re.findall(r"[A-Za-z]+", text))


def english_left(at: AppTest, ctx_names: set[str]) -> set[str]:
    return main_area_words(at) - ALLOWED - ctx_names


def _names_without_translation() -> set[str]:
    """Model names and class first names that have no Chinese (allowed as they are)."""
    words = set()
    for spec in models.CURATED.values():
        words |= set(re.findall(r"[A-Za-z]+", i18n.t(f"model.{spec.key}.title", "zh-Hant")))
    return words


@pytest.fixture(scope="module")
def zh_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["lang"] = "zh-Hant"
    at.run()
    assert not at.exception
    return at


@pytest.mark.parametrize("view", list(VIEWS))
def test_every_view_renders_in_chinese(zh_page, view):
    at = zh_page
    at.segmented_control(key="view").set_value(view).run()
    assert not at.exception
    assert english_left(at, _names_without_translation() | picker_english(at)) == set()


def picker_english(at: AppTest) -> set[str]:
    """The English first names a class picker keeps beside each Chinese one (to search), e.g.
    Head statistics' head-ablation class."""
    options = [o for box in at.selectbox for o in box.options if " · " in o]
    return {w for o in options for w in re.findall(r"[A-Za-z]+", o.split(" · ")[-1])}


def test_the_class_map_and_mask_render_in_chinese(zh_page):
    at = zh_page
    at.segmented_control(key="view").set_value("Rollout").run()
    at.toggle(key="mask_on").set_value(True)
    at.toggle(key="trust_on").set_value(True)
    at.toggle(key="why_class").set_value(True).run()
    assert not at.exception
    # the class picker keeps each class's English first name beside its Chinese one (to search)
    picker = at.selectbox(key="target_class")
    assert " · " in picker.options[0]
    english = {w for o in picker.options for w in re.findall(r"[A-Za-z]+", o.split(" · ")[-1])}
    assert english_left(at, _names_without_translation() | english) == set()
    at.toggle(key="mask_on").set_value(False)
    at.toggle(key="trust_on").set_value(False)
    at.toggle(key="why_class").set_value(False).run()


@pytest.mark.parametrize("step", range(len(STEPS)))
def test_every_lesson_step_renders_in_chinese(zh_page, step):
    at = zh_page
    at.session_state["lesson"] = True
    at.session_state["lesson_step"] = step
    at.run()
    assert not at.exception
    assert at.query_params.get("lesson") == "1"
    assert english_left(at, _names_without_translation()) == set()
    at.session_state["lesson"] = False
    at.run()


def test_the_language_switch_is_kept_in_the_url():
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert at.session_state["lang"] == "en" and "lang" not in at.query_params
    at.segmented_control(key="lang").set_value("zh-Hant").run()
    assert at.query_params["lang"] == "zh-Hant"
    assert any("視覺 Transformer" in m.value for m in at.markdown)
    # a link with the language opens in it
    linked = AppTest.from_file(APP, default_timeout=120)
    linked.query_params.update(at.query_params)
    linked.run()
    assert linked.session_state["lang"] == "zh-Hant"
    assert all("what does the Vision Transformer" not in m.value for m in linked.markdown)
    # and switching back to English keeps English in the link (it was chosen)
    at.segmented_control(key="lang").set_value("en").run()
    assert at.query_params["lang"] == "en"
    assert any("what does the Vision Transformer" in m.value for m in at.markdown)


def test_the_memory_budget_speaks_the_pages_language():
    from vitviz.errors import MemoryBusy, MemoryRefused

    err = MemoryRefused("…", "explanation", 3 * 2**30, 2 * 2**30, 6 * 2**30)
    en = i18n.error_text(err, "en")
    assert en.startswith("This explanation would need 3.0 GB")
    assert "2.0 GB" in en and "6.0 GB" in en and "224 px" in en and "vitviz server" in en
    zh = i18n.error_text(err, "zh-Hant")
    assert zh.startswith("這次解釋一次需要 3.0 GB") and "224 像素" in zh
    command = "python -m vitviz explain"  # a command stays as typed
    assert not re.search(r"[A-Za-z]{4,}", zh.replace(command, "").replace("vitviz", ""))
    busy = i18n.error_text(MemoryBusy("…", 300 * 2**20, 121.4), "zh-Hant")
    assert "121 秒" in busy and "300 MB" in busy
    odd = i18n.error_text(MemoryRefused("…", "something new", 1, 1, 1), "en")
    assert odd.startswith("This work would need")
