"""The X-LoRA and LoRA readers refuse broken directories with errors that say what is wrong."""

from __future__ import annotations

import json
import shutil

import pytest

from mistralrs.plugins.xlora.lora_files import AdapterError, read_lora_adapter
from mistralrs.plugins.xlora.xlora_files import read_xlora
from xlora_layouts import ADAPTERS, load_xlora, mistralrs_layout, peft_layout


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_both_layouts_read_the_same_adapters(tmp_path):
    ours = read_xlora(mistralrs_layout(tmp_path / "m", "v2_layerwise_topk_temp"))
    peft = read_xlora(peft_layout(tmp_path / "p", "v2_layerwise_topk_temp"))
    assert (ours.layout, peft.layout) == ("mistral.rs", "peft")
    assert [len(a.modules) for a in ours.adapters] == [len(a.modules) for a in peft.adapters] == [6, 6, 10]
    assert ours.config.top_k_lora == peft.config.top_k_lora == 2
    assert [w.shape for w, _ in ours.classifier] == [w.shape for w, _ in peft.classifier]


def test_base_model_id_mismatch(tmp_path):
    src = mistralrs_layout(tmp_path / "x", "v1_default")
    edit_json(src / "ordering.json", base_model_id="someone/else")
    with pytest.raises(AdapterError, match="base_model_id 'someone/else' does not match"):
        read_xlora(src)


def test_missing_adapter_folder(tmp_path):
    src = mistralrs_layout(tmp_path / "x", "v1_default")
    shutil.rmtree(src / "adapter_1")
    with pytest.raises(AdapterError, match="adapter 'adapter_1' not found"):
        read_xlora(src)


def test_order_must_name_the_configs_adapters(tmp_path):
    src = mistralrs_layout(tmp_path / "x", "v1_default")
    edit_json(src / "ordering.json", order=["adapter_0", "adapter_1"])
    with pytest.raises(AdapterError, match="does not name the adapters"):
        read_xlora(src)


def test_classifier_shape_must_fit_the_scalings(tmp_path):
    src = mistralrs_layout(tmp_path / "x", "v1_default")
    edit_json(src / "xlora_config.json", layerwise_scalings=True)  # the classifier has 3 outputs, not 10 x 3
    with pytest.raises(AdapterError, match=r"expected \[30, 64\] \(scalings for 10 layers x 3 adapters\)"):
        load_xlora(src)


def test_ordering_layers_must_cover_the_targets(tmp_path):
    src = mistralrs_layout(tmp_path / "x", "v1_default")
    order = json.loads((src / "ordering.json").read_text())
    del order["layers"]["model.layers.1.mlp.down_proj"]
    (src / "ordering.json").write_text(json.dumps(order))
    with pytest.raises(AdapterError, match="lacks.*model.layers.1.mlp.down_proj"):
        load_xlora(src)


def test_peft_config_of_another_type(tmp_path):
    src = peft_layout(tmp_path / "p", "v1_default")
    edit_json(src / "adapter_config.json", peft_type="LORA")
    with pytest.raises(AdapterError, match="expected XLORA"):
        read_xlora(src)


def test_adapter_rank_must_match_its_config(tmp_path):
    dest = tmp_path / "a"
    shutil.copytree(ADAPTERS / "adapter_0", dest)
    edit_json(dest / "adapter_config.json", r=5)
    with pytest.raises(AdapterError, match="expected .* with r = 5"):
        read_lora_adapter(dest)


def test_adapter_for_a_module_the_model_lacks(tmp_path):
    from safetensors.torch import load_file, save_file

    src = mistralrs_layout(tmp_path / "x", "v1_default")
    weights = src / "adapter_0" / "adapter_model.safetensors"
    tensors = {k.replace("layers.1.", "layers.7."): v for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights))
    with pytest.raises(AdapterError, match="adapter 'adapter_0' targets 'model.layers.7.*which this model does not have"):
        load_xlora(src)
