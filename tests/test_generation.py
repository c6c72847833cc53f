"""The `GenerationMixin` contract of SQLlavaForConditionalGeneration, on transformers 4.57.x and 5.x alike.

Modelled on transformers' own common tests (`tests/generation/test_utils.py` GenerationTesterMixin,
`tests/test_modeling_common.py`, `tests/models/llava/test_modeling_llava.py`), with an image in every prompt:
continuing from a returned cache, a pre-filled prompt cache reused across questions, generating from `inputs_embeds`,
assisted decoding with a smaller SQ-LLaVA, prompt-lookup decoding, a static cache under `torch.compile`, beam search
against a float64 reference, attention outputs of the eager implementation, and eager == SDPA with left padding.

CI runs this file in both environments (job 1: 5.x, job 2: 4.57). Tiny random models on the CPU: about 20 s in all.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from modeling_sqllava import SQLlavaConfig, SQLlavaForConditionalGeneration
from recipes.tiny import TINY_TEXT_CONFIG, TINY_VISION_CONFIG
from tests.test_modeling import IMAGE_ID, PAD_ID, VOCAB, make_inputs, make_model

torch.set_num_threads(1)

TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
# The name generate() and the outputs give the KV cache on the installed transformers.
CACHE = "cache" if TRANSFORMERS_5 else "past_key_values"
# Generate to the full length (no EOS) so that two ways of generating always produce the same number of tokens.
GREEDY = {"do_sample": False, "pad_token_id": PAD_ID, "eos_token_id": None}


def count_calls(module: torch.nn.Module) -> list:
    """A list that grows by one at every forward of `module` (the caller removes nothing: models are per test)."""
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


def left_padded_batch(prompts: list[tuple[torch.Tensor, torch.Tensor]]):
    """Left-pad single prompts `(input_ids (1, L), pixel_values (1, 3, H, W))` into one batch with its mask."""
    width = max(ids.shape[1] for ids, _ in prompts)
    input_ids = torch.full((len(prompts), width), PAD_ID)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, (ids, _) in enumerate(prompts):
        input_ids[row, width - ids.shape[1] :] = ids[0]
        attention_mask[row, width - ids.shape[1] :] = 1
    return input_ids, attention_mask, torch.cat([pixels for _, pixels in prompts])


def cache_tensors(cache) -> list[torch.Tensor]:
    return [tensor for layer in cache.layers for tensor in (layer.keys, layer.values)]


# ------------------------------------------------------------------------------------------------ caller's caches


def test_generate_continues_from_the_cache_it_returned():
    """GenerationTesterMixin.test_generate_continue_from_past_key_values: 4 tokens at once == 3, then 1 more from
    the returned cache, with the same inputs (pixel_values included) passed to both calls."""
    model = make_model()
    input_ids, pixel_values = make_inputs(batch=2)
    inputs = {"input_ids": input_ids, "pixel_values": pixel_values, "attention_mask": torch.ones_like(input_ids)}
    kwargs = {**GREEDY, "return_dict_in_generate": True, "output_scores": True}
    at_once = model.generate(**inputs, max_new_tokens=4, **kwargs)

    tower_calls = count_calls(model.model.vision_tower)
    first = model.generate(**inputs, max_new_tokens=3, **kwargs)
    cache = getattr(first, CACHE)
    assert cache.get_seq_length() == input_ids.shape[1] + 2  # the last generated token is not in it yet
    continued = model.generate(
        input_ids=first.sequences,
        pixel_values=pixel_values,
        attention_mask=torch.ones_like(first.sequences),
        max_new_tokens=1,
        **{CACHE: cache},
        **kwargs,
    )
    assert torch.equal(continued.sequences, at_once.sequences)
    for expected, actual in zip(at_once.scores, first.scores + continued.scores):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    for expected, actual in zip(cache_tensors(getattr(at_once, CACHE)), cache_tensors(getattr(continued, CACHE))):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    # The image is encoded once: the continuation's new tokens hold no placeholder (the cache holds the image).
    assert len(tower_calls) == 1


def test_next_turn_from_the_returned_cache_equals_generating_from_scratch():
    model = make_model()
    input_ids, pixel_values = make_inputs(batch=1)
    first = model.generate(
        input_ids=input_ids, pixel_values=pixel_values, max_new_tokens=5, return_dict_in_generate=True, **GREEDY
    )
    next_turn = torch.cat([first.sequences, torch.tensor([[2, 31, 47, 59]])], dim=1)  # `</s>` and a new question
    from_cache = model.generate(
        input_ids=next_turn, pixel_values=pixel_values, max_new_tokens=5, **{CACHE: getattr(first, CACHE)}, **GREEDY
    )
    from_scratch = model.generate(input_ids=next_turn, pixel_values=pixel_values, max_new_tokens=5, **GREEDY)
    assert torch.equal(from_cache, from_scratch)


def test_prefilled_prompt_cache_is_reused_across_questions_about_one_image():
    """Prefix caching as transformers' docs show it: prefill image + system prompt once, then `copy.deepcopy` the
    cache for every question; the answers equal generating each full prompt from scratch."""
    model = make_model()
    prefix, pixel_values = make_inputs(batch=1, text_before=3, text_after=6)  # <s>, text, image, "system" text
    with torch.no_grad():
        prompt_cache = getattr(model(input_ids=prefix, pixel_values=pixel_values, use_cache=True), CACHE)
    prefix_length = prompt_cache.get_seq_length()
    assert prefix_length == prefix.shape[1]
    tower_calls = count_calls(model.model.vision_tower)
    questions = [
        torch.tensor([[101, 102, 103]]),
        torch.tensor([[201, 202]]),
        torch.tensor([[301, 302, 303, 304, 305]]),
    ]
    answers = []
    for question in questions:
        prompt = torch.cat([prefix, question], dim=1)
        cached = model.generate(
            input_ids=prompt,
            pixel_values=pixel_values,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=6,
            **{CACHE: copy.deepcopy(prompt_cache)},
            **GREEDY,
        )
        assert len(tower_calls) == 0  # the image is only in the reused cache
        scratch = model.generate(input_ids=prompt, pixel_values=pixel_values, max_new_tokens=6, **GREEDY)
        tower_calls.clear()
        assert torch.equal(cached, scratch)
        answers.append(cached[0, prompt.shape[1] :].tolist())
    assert prompt_cache.get_seq_length() == prefix_length  # deep copies were extended, not the prompt cache
    assert len({tuple(answer) for answer in answers}) > 1  # the questions matter: the test can tell them apart


@pytest.mark.skipif(TRANSFORMERS_5, reason="transformers 5.x names the cache `cache`")
def test_cache_keyword_of_5x_is_refused_on_4x_with_the_fix():
    model = make_model()
    input_ids, pixel_values = make_inputs(batch=1)
    with pytest.raises(ValueError, match="pass `past_key_values=` instead of `cache=`"):
        model.generate(input_ids=input_ids, pixel_values=pixel_values, cache=object(), max_new_tokens=2, **GREEDY)


def test_generate_from_inputs_embeds_with_images():
    """GenerationTesterMixin.test_generate_from_inputs_embeds (which LLaVA's tests skip): the placeholders are found
    in the embeddings, the images go to the prefill, and the tokens equal generating from the ids."""
    model = make_model()
    input_ids, pixel_values = make_inputs(batch=2)
    inputs = {"pixel_values": pixel_values, "attention_mask": torch.ones_like(input_ids)}
    from_ids = model.generate(input_ids=input_ids, max_new_tokens=5, **inputs, **GREEDY)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(input_ids)
    from_embeds = model.generate(inputs_embeds=embeds, max_new_tokens=5, **inputs, **GREEDY)
    assert torch.equal(from_embeds, from_ids[:, input_ids.shape[1] :])  # only the new tokens, as for text models
    both = model.generate(input_ids=input_ids, inputs_embeds=embeds, max_new_tokens=5, **inputs, **GREEDY)
    assert torch.equal(both, from_ids)


def test_a_generated_image_token_is_a_plain_token_when_decoding_from_the_cache():
    """Only a forward whose inputs hold the prompt's placeholders receives the images: a one-token decoding step
    that happens to produce the `<image>` id must not re-encode them (tokens: 1, features: 16)."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class ForceImageTokenAtStep(LogitsProcessor):
        def __init__(self, position: int):
            self.position = position

        def __call__(self, input_ids, scores):
            if input_ids.shape[1] == self.position:
                scores = torch.full_like(scores, -float("inf"))
                scores[:, IMAGE_ID] = 0.0
            return scores

    model = make_model()
    input_ids, pixel_values = make_inputs(batch=1)
    tower_calls = count_calls(model.model.vision_tower)
    out = model.generate(
        input_ids=input_ids,
        pixel_values=pixel_values,
        max_new_tokens=4,
        logits_processor=LogitsProcessorList([ForceImageTokenAtStep(input_ids.shape[1] + 1)]),
        **GREEDY,
    )
    assert out[0, input_ids.shape[1] + 1] == IMAGE_ID and out.shape[1] == input_ids.shape[1] + 4
    assert len(tower_calls) == 1


# --------------------------------------------------------------------------------------- assisted / lookup decoding


def smaller_sqllava(seed: int = 1) -> SQLlavaForConditionalGeneration:
    """An assistant: same vocabulary and image size, half the text width, one text layer, its own random weights."""
    text_config = dict(
        TINY_TEXT_CONFIG,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=VOCAB,
        pad_token_id=PAD_ID,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = SQLlavaConfig(
        vision_config=dict(TINY_VISION_CONFIG), text_config=text_config, image_token_id=IMAGE_ID, num_prototypes=4
    )
    torch.manual_seed(seed)
    return SQLlavaForConditionalGeneration(config).eval()


def one_layer_copy(model: SQLlavaForConditionalGeneration) -> SQLlavaForConditionalGeneration:
    """`model` without its last text layer, as a separate (smaller) SQ-LLaVA sharing no tensors with it."""
    config = copy.deepcopy(model.config)
    config.text_config.num_hidden_layers = 1
    smaller = SQLlavaForConditionalGeneration(config).eval()
    missing, unexpected = smaller.load_state_dict(copy.deepcopy(model.state_dict()), strict=False)
    assert missing == [] and all(".layers.1." in name for name in unexpected)
    return smaller


@pytest.mark.parametrize("assistant_kind", ["random", "equivalent"])
def test_assisted_decoding_with_a_smaller_sqllava_equals_greedy(assistant_kind):
    """GenerationTesterMixin.test_assisted_decoding_matches_greedy_search with a smaller SQ-LLaVA as assistant. A
    "random" assistant is mostly wrong (candidates rejected); an "equivalent" one is the main model minus a text layer
    that the main model makes the identity (candidates accepted): both must give exactly the greedy tokens."""
    model = make_model()
    if assistant_kind == "equivalent":
        with torch.no_grad():  # layer 1 adds zero to the residual stream: the 1-layer model predicts the same tokens
            model.model.language_model.layers[1].self_attn.o_proj.weight.zero_()
            model.model.language_model.layers[1].mlp.down_proj.weight.zero_()
        assistant = one_layer_copy(model)
    else:
        assistant = smaller_sqllava()
    # Four candidates per round, whatever the assistant's confidence (a random model is never confident, and the
    # default confidence threshold would stop its drafts after one token).
    assistant.generation_config.num_assistant_tokens = 4
    assistant.generation_config.num_assistant_tokens_schedule = "constant"
    assistant.generation_config.assistant_confidence_threshold = 0.0
    input_ids, pixel_values = make_inputs(batch=1)
    inputs = {"input_ids": input_ids, "pixel_values": pixel_values, "attention_mask": torch.ones_like(input_ids)}
    greedy = model.generate(**inputs, max_new_tokens=10, **GREEDY)

    main_calls, main_tower = count_calls(model.model.language_model), count_calls(model.model.vision_tower)
    assistant_tower = count_calls(assistant.model.vision_tower)
    assisted = model.generate(**inputs, assistant_model=assistant, max_new_tokens=10, **GREEDY)
    assert torch.equal(assisted, greedy)
    # Each model encodes the image once, at its own prefill; later assistant rounds continue its cache.
    assert len(main_tower) == 1 and len(assistant_tower) == 1
    if assistant_kind == "equivalent":
        assert len(main_calls) <= 3  # 4 candidates + 1 token per forward were accepted: 10 tokens in 2-3 forwards
    else:
        assert len(main_calls) >= 5  # mostly rejected


def test_prompt_lookup_decoding_equals_greedy_and_accepts_candidates():
    """GenerationTesterMixin.test_prompt_lookup_decoding_matches_greedy_search. The tiny model's greedy continuation
    repeats itself, so n-grams from the sequence are proposed and accepted (fewer forwards than tokens).
    4.57's prompt-lookup generator needs an EOS id, so one is set (the greedy run uses the same)."""
    model = make_model()
    input_ids, pixel_values = make_inputs(batch=1)
    kwargs = {**GREEDY, "eos_token_id": 2, "max_new_tokens": 12}
    greedy = model.generate(input_ids=input_ids, pixel_values=pixel_values, **kwargs)
    generated = greedy[0, input_ids.shape[1] :].tolist()
    assert 2 not in generated and len(set(generated)) < len(generated)  # a repeating continuation to look up
    calls = count_calls(model.model.language_model)
    lookup = model.generate(input_ids=input_ids, pixel_values=pixel_values, prompt_lookup_num_tokens=3, **kwargs)
    assert torch.equal(lookup, greedy)
    assert len(calls) < 12


# ------------------------------------------------------------------------------------------ static cache + compile


@pytest.mark.slow
def test_static_cache_with_torch_compile_equals_dynamic_cache():
    """GenerationTesterMixin.test_generate_compile_model_forward_fullgraph: with a static cache generate() compiles
    the decoding forward (fullgraph=True: a graph break is an error). The backend records the graphs dynamo captured
    and runs them as captured: about 5 s on a CPU, where inductor's code generation takes about 2 minutes."""
    from transformers.generation import CompileConfig

    model = make_model()
    input_ids, pixel_values = make_inputs(batch=2)
    inputs = {"input_ids": input_ids, "pixel_values": pixel_values, "attention_mask": torch.ones_like(input_ids)}
    dynamic = model.generate(**inputs, max_new_tokens=5, **GREEDY)

    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    compile_config = CompileConfig(fullgraph=True, backend=recording_backend, mode=None)
    compile_config._compile_all_devices = True  # generate() compiles only on accelerators unless told otherwise
    torch._dynamo.reset()
    static = model.generate(
        **inputs, max_new_tokens=5, cache_implementation="static", compile_config=compile_config, **GREEDY
    )
    assert torch.equal(static, dynamic)
    assert len(graphs) >= 1  # the decoding steps ran through the compiled forward
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------------------ beam search


def reference_beam_search(model, input_ids, pixel_values, num_beams: int, steps: int):
    """Beam search written from its definition, in float64, recomputing every beam from scratch (no cache): keep the
    `num_beams` highest sums of token log-probabilities; with no EOS every beam reaches `steps` tokens, and the
    final score is the sum divided by the generated length (length_penalty=1)."""
    beams = [(input_ids[0].tolist(), 0.0)]
    with torch.no_grad():
        for _ in range(steps):
            candidates = []
            for tokens, score in beams:
                logits = model(input_ids=torch.tensor([tokens]), pixel_values=pixel_values).logits[0, -1]
                log_probs = torch.log_softmax(logits, dim=-1)
                top = torch.topk(log_probs, num_beams)
                candidates += [(tokens + [int(token)], score + float(value)) for value, token in zip(*top)]
            beams = sorted(candidates, key=lambda beam: beam[1], reverse=True)[:num_beams]
    return [tokens for tokens, _ in beams], torch.tensor([score / steps for _, score in beams], dtype=torch.float64)


def test_beam_search_equals_a_float64_reference():
    """Against the definition rather than against LLaVA: the reference shares no code with generate() (no cache, no
    beam reordering, no scorer), and float64 leaves no near-ties for rounding to flip."""
    model = make_model().double()
    input_ids, pixel_values = make_inputs(batch=1)
    pixel_values = pixel_values.double()
    expected_sequences, expected_scores = reference_beam_search(model, input_ids, pixel_values, num_beams=3, steps=4)
    out = model.generate(
        input_ids=input_ids,
        pixel_values=pixel_values,
        num_beams=3,
        num_return_sequences=3,
        max_new_tokens=4,
        length_penalty=1.0,
        return_dict_in_generate=True,
        output_scores=True,
        **GREEDY,
    )
    assert out.sequences.tolist() == expected_sequences
    assert len({tuple(sequence) for sequence in expected_sequences}) == 3
    # generate() accumulates beam scores in float32 whatever the model's dtype.
    torch.testing.assert_close(out.sequences_scores.double(), expected_scores, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------------- attention


def padded_prompts():
    return left_padded_batch(
        [make_inputs(1, seed=1, text_before=2, text_after=2), make_inputs(1, seed=2, text_before=5, text_after=6)]
    )


def test_output_attentions_with_eager_attention():
    """ModelTesterMixin.test_attention_outputs / GenerationTesterMixin._check_attentions_for_generate: shapes per
    layer and step, and each real query's probabilities sum to 1 over the keys it may see (causal, unpadded)."""
    model = make_model(attn_implementation="eager")
    input_ids, attention_mask, pixel_values = padded_prompts()
    batch, length = input_ids.shape
    heads, layers = TINY_TEXT_CONFIG["num_attention_heads"], TINY_TEXT_CONFIG["num_hidden_layers"]
    with torch.no_grad():
        out = model(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, output_attentions=True
        )
    assert len(out.attentions) == layers
    visible = attention_mask[:, None, None, :].bool() & torch.ones(length, length).tril().bool()  # (B, 1, Q, K)
    real_queries = attention_mask.bool()[:, None, :].expand(batch, heads, length)
    for weights in out.attentions:
        assert weights.shape == (batch, heads, length, length)
        sums = (weights * visible).sum(-1)
        torch.testing.assert_close(sums[real_queries], torch.ones_like(sums[real_queries]))
        assert weights.masked_fill(visible, 0)[real_queries].abs().max() < 1e-6  # padding and the future get nothing

    generated = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pixel_values=pixel_values,
        max_new_tokens=3,
        output_attentions=True,
        return_dict_in_generate=True,
        **GREEDY,
    )
    assert len(generated.attentions) == 3
    for step, per_layer in enumerate(generated.attentions):
        assert len(per_layer) == layers
        queries = length if step == 0 else 1
        for weights in per_layer:
            assert weights.shape == (batch, heads, queries, length + step)
            keys_mask = torch.cat([attention_mask, torch.ones(batch, step, dtype=torch.long)], dim=1).bool()
            torch.testing.assert_close((weights[:, :, -1] * keys_mask[:, None]).sum(-1), torch.ones(batch, heads))


def test_attention_can_be_switched_to_eager_at_runtime():
    """ModelTesterMixin.test_can_set_attention_dynamically_composite_model: `set_attn_implementation("eager")` on a
    loaded SDPA model reaches both towers, so attention weights come back from both."""
    model = make_model()
    if not hasattr(model, "set_attn_implementation"):
        pytest.skip("this transformers has no runtime set_attn_implementation")
    input_ids, pixel_values = make_inputs(batch=1)
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        model.get_image_features(pixel_values, output_attentions=True)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=pixel_values, output_attentions=True)
    assert len(out.attentions) == TINY_TEXT_CONFIG["num_hidden_layers"]
    assert all(weights is not None for weights in out.attentions)
    assert len(out.image_outputs.attentions) == 2 and all(w is not None for w in out.image_outputs.attentions)


def test_eager_equals_sdpa_with_images_and_left_padding():
    """ModelTesterMixin.test_eager_matches_sdpa_inference / test_eager_matches_sdpa_generate with images and a
    left-padded batch: logits of the real positions and the greedy tokens agree."""
    sdpa = make_model()
    eager = make_model(attn_implementation="eager")
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.config.text_config._attn_implementation == "sdpa"
    assert eager.config.text_config._attn_implementation == "eager"
    assert eager.config.vision_config._attn_implementation == "eager"
    input_ids, attention_mask, pixel_values = padded_prompts()
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
    with torch.no_grad():
        sdpa_logits, eager_logits = sdpa(**inputs).logits, eager(**inputs).logits
    real = attention_mask.bool()
    torch.testing.assert_close(sdpa_logits[real], eager_logits[real], rtol=1e-4, atol=1e-4)
    assert torch.equal(
        sdpa.generate(**inputs, max_new_tokens=6, **GREEDY), eager.generate(**inputs, max_new_tokens=6, **GREEDY)
    )
