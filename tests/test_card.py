"""Model cards: plain values, the Hub name as title, the dataset's own name, no token."""

import yaml
from conftest import lora_config, make_args
from datasets import Dataset, DatasetInfo

from trl_dde import DDEDiffusionTrainer
from trl_dde.card import card_data_for, dataset_name_of, render_model_card
from trl_dde.tiny import tiny_preference_dataset

TOKEN = "hf_thisIsNotARealTokenButMustNeverAppear"


def with_info(dataset, **info):
    """The same rows, with the metadata a dataset loaded from the Hub carries."""
    return Dataset(dataset.data, info=DatasetInfo(features=dataset.features, **info))


def trained(tmp_path, pipeline, dataset, **overrides):
    args = make_args(tmp_path, max_steps=1, lr_scheduler_type="linear", optim="adamw_torch", **overrides)
    trainer = DDEDiffusionTrainer(pipeline, args=args, train_dataset=dataset, peft_config=lora_config())
    trainer.train()
    return trainer


def test_card_shows_plain_values_the_hub_name_and_the_dataset_name(tmp_path, pipeline):
    """Friction 10: no enum reprs, title from hub_model_id, the dataset object's own name, no token anywhere."""
    data = with_info(tiny_preference_dataset(4), dataset_name="tiny-pairs")  # a dataset that knows its name
    trainer = trained(tmp_path, pipeline, data, hub_model_id="someone/sd15-dde-test", hub_token=TOKEN)
    trainer.save_model()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "SchedulerType" not in card and "OptimizerNames" not in card
    assert "| `lr_scheduler_type` | `linear` |" in card and "| `optim` | `adamw_torch` |" in card
    assert "\n# sd15-dde-test\n" in card
    assert "- Dataset: `tiny-pairs`" in card
    assert TOKEN not in card and TOKEN not in repr(card_data_for(trainer))
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["library_name"] == "diffusers" and "datasets" not in metadata  # a local name, not a Hub id


def test_explicit_names_win_and_the_output_folder_is_the_fallback_title(tmp_path, pipeline):
    trainer = trained(tmp_path, pipeline, tiny_preference_dataset(4))
    data = card_data_for(trainer, dataset_name="owner/pairs", base_model="owner/base")
    assert data.model_name == "out" and data.dataset_name == "owner/pairs" and data.base_model == "owner/base"
    metadata = yaml.safe_load(render_model_card(data).split("---")[1])
    assert metadata["datasets"] == ["owner/pairs"] and metadata["base_model"] == "owner/base"
    assert card_data_for(trainer, model_name="my-title").model_name == "my-title"


def test_dataset_name_of_ignores_generic_loaders(tmp_path):
    named = with_info(tiny_preference_dataset(2), dataset_name="pickapic_v2", config_name="small")
    assert dataset_name_of(named) == "pickapic_v2 (small)"
    path = tmp_path / "pairs.parquet"
    tiny_preference_dataset(2).to_parquet(str(path))
    from datasets import load_dataset

    assert dataset_name_of(load_dataset("parquet", data_files=str(path), split="train")) is None  # "parquet"
    assert dataset_name_of(tiny_preference_dataset(2)) is None
