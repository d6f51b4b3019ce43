#!/usr/bin/env python3
"""Writes the tokenizer parity fixtures used by tests/tokenizer/ (the C++ tokenizer must give the
same ids and decodes as Hugging Face `tokenizers`).

For every fixture it trains (offline: the corpus is written below, plus Python stdlib sources for
code) a small tokenizer with the `tokenizers` library in a Falcon-H1-like or otherwise common
configuration, then writes
    tests/fixtures/tokenizer/<name>/tokenizer.json   (+ tokenizer_config.json etc. for some)
    tests/fixtures/tokenizer/<name>/expected.json    {"lossless", "cases": [...]}
and tests/fixtures/tokenizer/index.json listing the fixtures.

Each case holds the input ("text", or "hex" for bytes that are not valid UTF-8; the expected ids
are those of the text decoded with errors="replace", our documented behaviour), the ids with and
without special tokens, and decode(ids) with and without skip_special_tokens.

Usage: pip install tokenizers && python3 tests/python/make_tokenizer_fixtures.py
"""
import copy
import json
import os
import shutil
import sysconfig

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")

# ---- corpus: a few natural sentences in each of the 18 Falcon-H1 languages ----
SENTENCES = {
    "ar": ["مرحبا بكم في عالم النماذج اللغوية الكبيرة.", "ذهب الطالب إلى المكتبة ليقرأ كتابا عن التاريخ.",
           "الطقس اليوم جميل، والشمس مشرقة في السماء."],
    "cs": ["Dobrý den, jak se dnes máte?", "Příliš žluťoučký kůň úpěl ďábelské ódy.",
           "Praha je hlavní město České republiky a leží na Vltavě."],
    "de": ["Guten Morgen! Wie geht es Ihnen heute?", "Die Straßenbahn fährt über die Brücke in die Altstadt.",
           "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich."],
    "en": ["The quick brown fox jumps over the lazy dog.", "I'm sure they'll say it's fine, don't you think?",
           "Language models predict the next token given the previous ones."],
    "es": ["¿Dónde está la estación de tren más cercana?", "El niño comió una manzana y después jugó en el jardín.",
           "¡Qué día tan bonito para pasear por la playa!"],
    "fr": ["Où est la bibliothèque, s'il vous plaît ?", "L'été dernier, nous avons visité les châteaux de la Loire.",
           "Les élèves préparent leurs exposés avec beaucoup d'enthousiasme."],
    "hi": ["नमस्ते, आप कैसे हैं?", "भारत एक विशाल और विविधताओं से भरा देश है।",
           "मैं हर सुबह चाय पीता हूँ और अख़बार पढ़ता हूँ।"],
    "it": ["Buongiorno, come sta oggi?", "Perché la pizza napoletana è così famosa nel mondo?",
           "Città, università e caffè portano l'accento sull'ultima sillaba."],
    "ja": ["こんにちは、お元気ですか？", "東京は日本の首都で、人口がとても多いです。",
           "私は毎朝コーヒーを飲みながらニュースを読みます。"],
    "ko": ["안녕하세요, 만나서 반갑습니다.", "서울은 대한민국의 수도이며 많은 사람들이 살고 있습니다.",
           "저는 주말마다 공원에서 자전거를 탑니다."],
    "nl": ["Goedemorgen, hoe gaat het met je?", "In Amsterdam fietsen bijna alle inwoners dagelijks naar hun werk.",
           "De kinderen spelen buiten in de regen en lachen hard."],
    "pl": ["Dzień dobry, jak się masz?", "Zażółć gęślą jaźń to znane polskie zdanie testowe.",
           "Kraków był kiedyś stolicą Polski i ma piękny rynek."],
    "pt": ["Olá, tudo bem com você?", "A informação está disponível na página principal do órgão.",
           "Não há nada melhor do que um pão de queijo quentinho."],
    "ro": ["Bună ziua, ce mai faceți?", "Bucureștiul este capitala României și are multe parcuri.",
           "Știința și tehnologia schimbă felul în care trăim."],
    "ru": ["Привет, как дела?", "Москва — столица России и крупнейший город страны.",
           "Съешь же ещё этих мягких французских булок да выпей чаю."],
    "sv": ["Hej, hur mår du idag?", "Stockholm är byggt på fjorton öar där Mälaren möter Östersjön.",
           "Flygande bäckasiner söka hwila på mjuka tuvor."],
    "ur": ["آپ کیسے ہیں؟", "پاکستان کا دارالحکومت اسلام آباد ہے۔", "میں روزانہ صبح سویرے سیر کرتا ہوں۔"],
    "zh": ["你好，世界！这是一个测试。", "北京是中国的首都，有着悠久的历史。", "我每天早上喝一杯咖啡，然后去上班。"],
}
LATEX = [r"The integral $\int_0^\infty e^{-x^2}\,dx = \frac{\sqrt{\pi}}{2}$ is classic.",
         r"\begin{align} a^2 + b^2 &= c^2 \\ E &= mc^2 \end{align}",
         r"\sum_{k=1}^{n} k = \frac{n(n+1)}{2}, \quad \alpha,\beta \in \mathbb{R}"]
NUMBERS = ["3.14159265358979323846264338327950288419716939937510", "1,234,567.89 and 2024-05-21 at 13:45:07",
           "Call +971 50 123 4567 or 0800-123-456; order #98765 costs $1,299.99 (15% off)."]
EMOJI = ["I love it 😀👍🏽 🇦🇪 ❤️ 👨‍👩‍👧‍👦!", "🦅 Falcon-H1 🚀🚀🚀", "☕️ + 🍰 = 😋"]
WHITESPACE = ["a\tb\t\tc", "line one\nline two\n\n\nline five", "many     spaces   here", "  leading and trailing  ",
              "\r\nwindows\r\nnewlines\r\n", "\t\n \u00a0\u3000mixed\u2028separators", " ", "", "\n", "x \n y"]
EDGE = ["don't IT'S we'll", "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|> spaced <|im_end|>", "text<|im_end|>more", "<|endoftext|>", "<s>hi</s>",
        "é vs e\u0301 and ﬁ ligature, Å, ①②③, ｆｕｌｌｗｉｄｔｈ", "İstanbul ΣΊΣΥΦΟΣ Straße",
        "[W] a[W] [W]b _[W]_ é[W]", "tail <b>  x  <b>", "   <b>", "MiXeD CaSe WoRdS", "a--b--c", "x\u200dy\u00adz"]
INVALID = [b"abc\xff\xfedef", b"\xe4\xb8", b"\xc0\xaf ok", b"\xed\xa0\x80 surrogate", b"\xf4\x90\x80\x80",
           b"emoji \xf0\x9f\x98 cut", b"\x80\x80\x80", b"ok \xe4\xb8\xad\xe6\x96 mixed \xe6\x96\x87"]


def stdlib_code():
    """Python sources from the standard library: the code part of the corpus, read offline."""
    base = sysconfig.get_paths()["stdlib"]
    chunks = []
    for rel in ["textwrap.py", "json/decoder.py", "heapq.py", "bisect.py", "colorsys.py"]:
        path = os.path.join(base, rel)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                chunks.append(f.read())
    return chunks


CODE = stdlib_code()
TRAIN = [s for v in SENTENCES.values() for s in v] * 3 + LATEX + NUMBERS + EMOJI + WHITESPACE + CODE


def test_texts():
    texts = [s for v in SENTENCES.values() for s in v] + LATEX + NUMBERS + EMOJI + WHITESPACE + EDGE
    texts.append(" ".join(s for v in SENTENCES.values() for s in v[:1]))  # all languages in one text
    for code in CODE[:2]:
        texts += [code[i:i + 600] for i in range(0, 2400, 600)]
    texts.append("9" * 70 + " " + "1234567890" * 5)
    return texts


FALCON_LIKE_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                     r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|pad|>", "<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
CHAT_TEMPLATE = ("{{bos_token}}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                 "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def bytelevel_tokenizer(pre, vocab_size, specials=(), ignore_merges=False):
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TRAIN, trainer)
    return tok


def sentencepiece_like(vocab_size, metaspace):
    """Llama-2 style: byte_fallback BPE over characters, <0xXX> tokens, unk, ▁ for spaces."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if metaspace:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="first")])
    else:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  limit_alphabet=120, show_progress=False)
    tok.train_from_iterator(TRAIN, trainer)
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    next_id = max(vocab.values()) + 1
    for b in range(256):  # byte tokens live in the model vocab, as in converted SentencePiece models
        vocab.setdefault(f"<0x{b:02X}>", next_id + b)
    if not metaspace:
        j["post_processor"] = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                               {"Sequence": {"id": "A", "type_id": 0}}],
                               "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                               "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    return Tokenizer.from_str(json.dumps(j))


def char_bpe(vocab_size):
    """Non-byte-level BPE with unk, for the normalizer / Whitespace pre-tokenizer fixtures."""
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["[UNK]"], show_progress=False)
    tok.train_from_iterator(TRAIN, trainer)
    return tok


def with_changes(tok, **fields):
    j = json.loads(tok.to_str())
    for key, value in fields.items():
        if key.startswith("model_"):
            j["model"][key[len("model_"):]] = value
        else:
            j[key] = value
    return Tokenizer.from_str(json.dumps(j))


def split_variant(base, pattern, behavior, invert):
    return with_changes(base, pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": pattern, "behavior": behavior, "invert": invert},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]})


def build_fixtures():
    fx = {}
    dp = pre_tokenizers.Sequence([pre_tokenizers.Punctuation("isolated"), pre_tokenizers.Digits(individual_digits=True),
                                  pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    for size in (300, 1000, 4000):
        fx[f"bytelevel_digits_punct_{size}"] = bytelevel_tokenizer(dp, size)
    base = fx["bytelevel_digits_punct_300"]

    # Mirrors the released Falcon-H1 layout as far as public sources show it: a llama3-style Split
    # regex + ByteLevel(use_regex=false), ignore_merges, digits and punctuation split, added
    # special tokens and a TemplateProcessing that prepends the bos token.
    falcon_pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(FALCON_LIKE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.Punctuation("isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    falcon = bytelevel_tokenizer(falcon_pre, 4000, SPECIALS, ignore_merges=True)
    falcon.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                      special_tokens=[("<|begin_of_text|>", falcon.token_to_id("<|begin_of_text|>"))])])
    fx["falcon_h1_like"] = falcon

    gpt2 = bytelevel_tokenizer(pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True), 1000, ["<|endoftext|>"])
    gpt2.post_processor = processors.ByteLevel(trim_offsets=True)
    j = json.loads(gpt2.to_str())
    j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]  # legacy format
    fx["gpt2_style_1000"] = Tokenizer.from_str(json.dumps(j))

    fx["sp_bytefallback_1000"] = sentencepiece_like(1000, metaspace=False)
    fx["metaspace_bytefallback_1000"] = sentencepiece_like(1000, metaspace=True)

    ms = fx["metaspace_bytefallback_1000"]
    for scheme, split in (("always", False), ("never", True)):
        fx[f"metaspace_{scheme}_split_{str(split).lower()}"] = with_changes(
            ms, pre_tokenizer={"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": split},
            decoder={"type": "Sequence", "decoders": [
                {"type": "ByteFallback"}, {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme,
                                           "split": split},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]})
    fx["bytelevel_prefix_noregex"] = with_changes(base, pre_tokenizer={
        "type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": False},
        normalizer={"type": "Replace", "pattern": {"String": "  "}, "content": " "})

    cb = char_bpe(1000)
    fx["char_bpe_whitespace"] = cb
    fx["norm_nfkc_lower_strip"] = with_changes(cb, normalizer={"type": "Sequence", "normalizers": [
        {"type": "NFKC"}, {"type": "Lowercase"}, {"type": "Strip", "strip_left": True, "strip_right": True},
        {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "}]})
    fx["norm_nfd_whitespacesplit"] = with_changes(cb, normalizer={"type": "NFD"},
                                                  pre_tokenizer={"type": "WhitespaceSplit"})
    fx["norm_nfc_bert"] = with_changes(cb, normalizer={"type": "NFC"}, pre_tokenizer={"type": "BertPreTokenizer"})
    fx["norm_nfkd_prepend"] = with_changes(cb, normalizer={"type": "Sequence", "normalizers": [
        {"type": "NFKD"}, {"type": "Prepend", "prepend": "_"}]}, pre_tokenizer={"type": "Metaspace",
        "replacement": "_", "prepend_scheme": "always", "split": True})

    for behavior in ["Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"]:
        for invert in (False, True):
            name = f"split_{behavior.lower()}{'_invert' if invert else ''}"
            fx[name] = split_variant(base, {"Regex": r"\s+|\p{P}"}, behavior, invert)
    fx["split_string_pattern"] = split_variant(base, {"String": "--"}, "MergedWithPrevious", False)
    fx["digits_contiguous"] = with_changes(base, pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": False},
        {"type": "Punctuation", "behavior": "Contiguous"},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}]})

    added = copy.deepcopy(json.loads(base.to_str()))
    nid = max(added["model"]["vocab"].values()) + 1
    def tok(content, **kw):
        nonlocal nid
        d = {"id": nid, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
        d.update(kw)
        nid += 1
        return d
    added["added_tokens"] = [tok("<|im_start|>"), tok("<|im_end|>", rstrip=True), tok("<s>", lstrip=True),
                             tok("</s>"), tok("[W]", single_word=True, special=False),
                             tok("<b>", lstrip=True, rstrip=True, special=False),
                             tok("case", normalized=True, special=False), tok("<|endoftext|>")]
    added["normalizer"] = {"type": "Lowercase"}
    fx["added_tokens_options"] = Tokenizer.from_str(json.dumps(added))
    return fx


def write_fixture(name, tok, texts):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tok.to_str())
    if name == "falcon_h1_like":
        config = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<|begin_of_text|>",
                  "eos_token": {"content": "<|end_of_text|>", "lstrip": False, "normalized": False,
                                "rstrip": False, "single_word": False},
                  "pad_token": "<|pad|>", "chat_template": CHAT_TEMPLATE,
                  "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 16384}
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, ensure_ascii=False, indent=1)
        with open(os.path.join(d, "special_tokens_map.json"), "w", encoding="utf-8") as f:
            json.dump({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "pad_token": "<|pad|>"}, f)
    cases, lossless = [], True
    for t in texts:
        if isinstance(t, bytes):
            case, text = {"hex": t.hex()}, t.decode("utf-8", errors="replace")
        else:
            case, text = {"text": t}, t
        ids = tok.encode(text, add_special_tokens=True).ids
        plain = tok.encode(text, add_special_tokens=False).ids
        case.update(ids=ids, ids_plain=plain, decoded=tok.decode(ids, skip_special_tokens=False),
                    decoded_skip=tok.decode(ids, skip_special_tokens=True))
        if isinstance(t, str) and tok.decode(plain, skip_special_tokens=False) != t:
            lossless = False
        cases.append(case)
    expected = {"lossless": lossless, "vocab_size": tok.get_vocab_size(with_added_tokens=True), "cases": cases}
    with open(os.path.join(d, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, separators=(",", ":"))
    return lossless


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    texts = test_texts() + INVALID
    index = {}
    for name, tok in build_fixtures().items():
        index[name] = write_fixture(name, tok, texts)
        print(f"{name}: lossless={index[name]}")
    with open(os.path.join(OUT, "index.json"), "w", encoding="utf-8") as f:
        json.dump({"fixtures": sorted(index)}, f, indent=1)


if __name__ == "__main__":
    main()
