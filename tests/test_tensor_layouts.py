"""Sparse, mkldnn and nested tensors in place of any tensor argument of the wrappers: a ValueError
naming the argument and asking for a dense (strided) tensor, never a raw torch error, and the
wrapper stays usable."""

import pytest
import torch

import inference_helpers
import sft_helpers
from kt_moe.tensor_checks import check_expert_map, check_tensor

K = 2

# layout name in the message -> conversion of a dense tensor
NOT_DENSE = {
    "sparse_coo": lambda t: t.to_sparse(),
    "sparse_csr": lambda t: t.to_sparse_csr(),  # 2-D
    "mkldnn": lambda t: t.float().to_mkldnn(),  # float32 only
    "nested": lambda t: torch.nested.as_nested_tensor(list(t)),  # one row per component
}
LAYOUTS_2D = sorted(NOT_DENSE)
LAYOUTS_ANY = ["sparse_coo"]  # the one conversion every dimension and dtype has

pytestmark = pytest.mark.filterwarnings("ignore:.*(Sparse CSR|nested tensors).*:UserWarning")


def refuses(name, layout):
    return pytest.raises(ValueError, match=rf"^{name} must be a dense \(strided\) tensor, got a {layout} tensor")


@pytest.mark.parametrize("layout", LAYOUTS_2D)
def test_check_tensor_names_the_layout(layout):
    value = NOT_DENSE[layout](torch.ones(3, 4))
    with refuses("hidden_states", layout):
        check_tensor(value, "hidden_states", (-1, 4), (value.dtype,))


def test_check_expert_map_refuses_sparse():
    with refuses("physical_to_logical_map", "sparse_coo"):
        check_expert_map(torch.arange(4).to_sparse(), 4, 4)


@pytest.fixture(scope="module")
def inference():
    wrapper, layer = inference_helpers.build(top_k=K, max_deferred=1)
    return wrapper, layer, layer.batch(3, K)


@pytest.mark.parametrize("call", ["forward", "submit_forward"])
@pytest.mark.parametrize("index,name,layouts", [(0, "hidden_states", LAYOUTS_2D), (1, "topk_ids", LAYOUTS_ANY),
                                                 (2, "topk_weights", LAYOUTS_2D), (3, "deferred_ids", LAYOUTS_ANY)])
def test_inference_forward_arguments(inference, call, index, name, layouts):
    wrapper, layer, batch = inference
    for layout in layouts:
        args = list(batch) + [torch.full_like(batch.ids, -1)]
        args[index] = NOT_DENSE[layout](args[index])
        with refuses(name, layout):
            getattr(wrapper, call)(*args[:3], deferred_ids=args[3])
    inference_helpers.assert_close(wrapper.forward(*batch), layer.reference(*batch))


def test_inference_sync_forward_and_select_deferred(inference):
    wrapper, layer, batch = inference
    wrapper.submit_forward(*batch)
    with refuses("hidden_states", "sparse_coo"):
        wrapper.sync_forward(batch.x.to_sparse())
    wrapper.sync_forward(batch.x)
    with refuses("expert_ids", "sparse_coo"):
        wrapper.select_deferred_experts(batch.ids.to_sparse(), batch.weights, 1)
    with refuses("scores", "sparse_csr"):
        wrapper.select_deferred_experts(batch.ids, batch.weights.to_sparse_csr(), 1)
    with refuses("gpu_experts_mask", "sparse_coo"):
        wrapper.set_gpu_experts_mask(torch.zeros(layer.shape.num_experts, dtype=torch.bool).to_sparse())


@pytest.mark.parametrize("helpers", [inference_helpers, sft_helpers], ids=["inference", "sft"])
@pytest.mark.parametrize("index,name", list(enumerate(["gate", "up", "down", "physical_to_logical_map"])))
def test_load_weights_from_tensors(helpers, index, name):
    layer = helpers.make_layer(helpers.TINY)
    args = [layer.gate, layer.up, layer.down, layer.physical_map]
    args[index] = args[index].to_sparse()
    with refuses(name, "sparse_coo"):
        helpers.make_wrapper(helpers.TINY, top_k=K).load_weights_from_tensors(*args)


def test_sft_arguments():
    wrapper, layer = sft_helpers.build(top_k=K)
    batch = layer.batch(3, K)
    for index, name in enumerate(["hidden_states", "expert_ids", "weights"]):
        args = list(batch[:3])
        args[index] = args[index].to_sparse()
        with refuses(name, "sparse_coo"):
            wrapper.forward_sft(*args, save_for_backward=True)
    with refuses("hidden_states", "nested"):
        wrapper.forward_sft(NOT_DENSE["nested"](batch.x), batch.expert_ids, batch.weights)
    wrapper.forward_sft(*batch[:3], save_for_backward=True)
    with refuses("grad_output", "sparse_csr"):
        wrapper.backward(batch.grad_output.to_sparse_csr())
    wrapper.backward(batch.grad_output)
    for index, name in enumerate(sft_helpers.LORA_NAMES):
        lora = list(layer.lora)
        lora[index] = lora[index].to_sparse()
        with refuses(name, "sparse_coo"):
            wrapper.init_lora_weights(*lora)
    sft_helpers.assert_close(sft_helpers.step(wrapper, batch), layer.reference(batch))
