"""`medals train CONFIG`: one command trains and exports; mistakes end in one line and an exit code."""
import json

from medals.cli import main
from train_fixtures import tiny_config, write_tiny_tower, write_toy_dataset


def test_medals_train_runs_the_configured_steps_and_exports_the_model_with_its_card(tmp_path, parity, capsys):
    (tmp_path / "card.md").write_text("# Toy model\n")
    config = tiny_config(write_toy_dataset(tmp_path / "data"), write_tiny_tower(parity, tmp_path / "tower"),
                         tmp_path / "run", steps=2, model_card=str(tmp_path / "card.md"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert main(["train", str(tmp_path / "config.json"), "--device", "cpu"]) == 0
    assert "step 2/2" in capsys.readouterr().out
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    assert (tmp_path / "run" / "model" / "MODEL_CARD.md").read_text() == "# Toy model\n"
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_a_missing_configuration_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nowhere.json")]) == 2
    assert capsys.readouterr().err.strip() == f"medals: error: {tmp_path / 'nowhere.json'}: training config not found"
