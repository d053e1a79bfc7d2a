import pytest

from kronbit.data.glue import TASKS, get_task, load_split
from kronbit.core.errors import DataError

# Sizes of the local GLUE files (see the data README); dev/test counted by hand with wc + header.
REAL_SIZES = {
    "cola": (8551, 1043, 1063), "sst2": (67349, 872, 1821), "mrpc": (3668, 408, 1725),
    "rte": (2490, 277, 3000), "stsb": (5749, 1500, 1379),
}


@pytest.mark.parametrize("task", sorted(REAL_SIZES))
def test_real_glue_files(glue_dir, task):
    t = get_task(task)
    for split, n in zip(("train", "dev", "test"), REAL_SIZES[task]):
        ex = load_split(t, glue_dir, split)
        assert len(ex) == n
        assert all(e.text_a for e in ex)
        assert all((e.text_b is not None) == t.is_pair for e in ex)
        if split == "test":
            assert all(e.label is None for e in ex)
        elif t.is_regression:
            assert all(0.0 <= e.label <= 5.0 for e in ex)
        else:
            assert {e.label for e in ex} == set(range(t.num_labels))


def test_real_quirks(glue_dir):
    mrpc = load_split("mrpc", glue_dir, "train")
    assert not mrpc[0].text_a.startswith("\ufeff")  # BOM stripped
    assert mrpc[0].text_a.startswith("Amrozi accused")
    rte = load_split("rte", glue_dir, "dev")
    assert rte[0].label == get_task("rte").labels.index("not_entailment")
    cola = load_split("cola", glue_dir, "train")
    assert cola[0].text_a.startswith("Our friends won't buy")  # first line is data, not a header


def _write(tmp_path, folder, name, text, encoding="utf-8"):
    d = tmp_path / folder
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(text, encoding=encoding)
    return tmp_path


def test_cola_headerless(tmp_path):
    _write(tmp_path, "CoLA", "train.tsv", "src\t1\t\tA fine sentence.\nsrc\t0\t*\tSentence bad a.\n")
    ex = load_split("cola", tmp_path, "train")
    assert [(e.text_a, e.label) for e in ex] == [("A fine sentence.", 1), ("Sentence bad a.", 0)]


def test_mrpc_bom(tmp_path):
    _write(tmp_path, "MRPC", "dev.tsv", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\tA b.\tC d.\n")
    (ex,) = load_split("mrpc", tmp_path, "dev")
    assert (ex.text_a, ex.text_b, ex.label) == ("A b.", "C d.", 0)


def test_stsb_regression_and_rte_strings(tmp_path):
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    _write(tmp_path, "STS-B", "train.tsv", head + "0\tg\tf\ty\t0\tn\tn\tA.\tB.\t3.800\n")
    (ex,) = load_split("stsb", tmp_path, "train")
    assert ex.label == pytest.approx(3.8) and isinstance(ex.label, float)
    _write(tmp_path, "RTE", "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n")
    (ex,) = load_split("rte", tmp_path, "train")
    assert ex.label == 0


def test_mnli_dev_is_dev_matched(tmp_path):
    head = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
            "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n")
    _write(tmp_path, "MNLI", "dev_matched.tsv", head + "0\t1\t2\tg\tx\tx\tx\tx\tP.\tH.\tneutral\tcontradiction\n")
    (ex,) = load_split("mnli", tmp_path, "dev")
    assert ex.label == get_task("mnli").labels.index("contradiction")


def test_task_folder_itself_is_accepted(tmp_path):
    _write(tmp_path, "SST-2", "train.tsv", "sentence\tlabel\nnice\t1\n")
    assert len(load_split("sst2", tmp_path / "SST-2", "train")) == 1


@pytest.mark.parametrize("content, message", [
    ("sentence\tlabel\nnice\t1\textra\n", r"train.tsv:2: expected 2 tab-separated columns, got 3"),
    ("sentence\tlabel\nnice\t7\n", r"train.tsv:2: label '7' is not one of 0, 1"),
    ("", r"file is empty"),
    ("sentence\tlabel\n", r"no examples after the header"),
    ("text\tlabel\nnice\t1\n", r"header has no column 'sentence'"),
])
def test_malformed_tsv(tmp_path, content, message):
    _write(tmp_path, "SST-2", "train.tsv", content)
    with pytest.raises(DataError, match=message):
        load_split("sst2", tmp_path, "train")


def test_bad_rows_can_be_skipped(tmp_path):
    _write(tmp_path, "SST-2", "train.tsv", "sentence\tlabel\nnice\t1\nbroken row\nbad\t0\n")
    assert len(load_split("sst2", tmp_path, "train", on_bad_row="skip")) == 2


def test_stsb_bad_score(tmp_path):
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    _write(tmp_path, "STS-B", "dev.tsv", head + "0\tg\tf\ty\t0\tn\tn\tA.\tB.\thigh\n")
    with pytest.raises(DataError, match=r"dev.tsv:2: score 'high' is not a number"):
        load_split("stsb", tmp_path, "dev")


def test_missing_things(tmp_path):
    with pytest.raises(DataError, match="data directory not found"):
        load_split("sst2", tmp_path / "nowhere", "train")
    with pytest.raises(DataError, match=r"no SST-2/ folder for task sst2"):
        load_split("sst2", tmp_path, "train")
    _write(tmp_path, "SST-2", "train.tsv", "sentence\tlabel\nnice\t1\n")
    with pytest.raises(DataError, match="missing dev split for task sst2"):
        load_split("sst2", tmp_path, "dev")
    with pytest.raises(DataError, match="has no split 'validation'; valid splits: train, dev, test"):
        load_split("sst2", tmp_path, "validation")


def test_task_registry():
    assert set(TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    assert get_task("SST-2").name == "sst2"
    assert get_task("stsb").is_regression and get_task("stsb").num_labels == 1
    assert get_task("mnli").num_labels == 3
    with pytest.raises(DataError, match="unknown task 'sst3'; did you mean 'sst2'"):
        get_task("sst3")
