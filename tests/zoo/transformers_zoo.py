"""Tiny `transformers` architectures from configuration classes (random weights, no download).

Each builder returns `(wrapper module, example inputs)`: the wrapper returns only the main
tensor (logits or last hidden state) with caches off, so the export is one clean graph.
Sizes: hidden 32-64, 2 layers, 2-4 heads, vocabulary 100-200, 8 tokens, 32x32 images, 1600
audio samples.
"""

from __future__ import annotations

import torch
import transformers as tf

from tests.zoo import register

torch.manual_seed(0)
SEQ = 8
VOCAB = 128


class MainOutput(torch.nn.Module):
    """Call the model with keyword inputs and return one tensor of its output."""

    def __init__(self, model, names, field):
        super().__init__()
        self.model, self.names, self.field = model, names, field

    def forward(self, *args):
        kwargs = dict(zip(self.names, args, strict=True))
        extra = {"use_cache": False} if getattr(self.model.config, "use_cache", None) is not None else {}
        out = self.model(**kwargs, **extra, return_dict=True)
        return getattr(out, self.field)


def _ids(n=SEQ):
    return torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(0))


def _eager(cfg):
    """Eager attention; mixture-of-experts layers run every expert as one batched matmul on the
    experts their router picked (static shapes; the default grouped_mm does not export)."""
    cfg._attn_implementation = "eager"
    if hasattr(cfg, "num_local_experts"):
        cfg._experts_implementation = "batched_mm"
    return cfg


def _lm(cls, cfg):
    model = cls(_eager(cfg)).eval()
    return MainOutput(model, ["input_ids"], "logits"), (_ids(),)


def _hidden(cls, cfg, names, inputs, field="last_hidden_state"):
    model = cls(_eager(cfg)).eval()
    return MainOutput(model, names, field), inputs


SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=64)


def _decoder(name, cls, cfg_cls, **kw):
    register(name, "decoder")(lambda: _lm(cls, cfg_cls(**{**SMALL, **kw})))


_decoder("gpt2", tf.GPT2LMHeadModel, lambda **k: tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                                                n_positions=64, bos_token_id=0,
                                                                eos_token_id=0))
_decoder("llama", tf.LlamaForCausalLM, tf.LlamaConfig, num_key_value_heads=2)
_decoder("mistral", tf.MistralForCausalLM, tf.MistralConfig, num_key_value_heads=2, sliding_window=4)
_decoder("qwen2", tf.Qwen2ForCausalLM, tf.Qwen2Config, num_key_value_heads=2)
_decoder("qwen3", tf.Qwen3ForCausalLM, tf.Qwen3Config, num_key_value_heads=2, head_dim=8)
_decoder("gemma", tf.GemmaForCausalLM, tf.GemmaConfig, num_key_value_heads=2, head_dim=8)
_decoder("gemma2", tf.Gemma2ForCausalLM, tf.Gemma2Config, num_key_value_heads=2, head_dim=8, sliding_window=4)
_decoder("phi", tf.PhiForCausalLM, tf.PhiConfig, partial_rotary_factor=0.5)
_decoder("phi3", tf.Phi3ForCausalLM, tf.Phi3Config, pad_token_id=0)
_decoder("gpt-neox", tf.GPTNeoXForCausalLM, tf.GPTNeoXConfig, rotary_pct=0.5)
_decoder("falcon", tf.FalconForCausalLM, lambda **k: tf.FalconConfig(vocab_size=VOCAB, hidden_size=32,
                                                                      num_hidden_layers=2, num_attention_heads=4,
                                                                      alibi=True, new_decoder_architecture=False))
_decoder("bloom", tf.BloomForCausalLM, lambda **k: tf.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2,
                                                                   n_head=4))
_decoder("opt", tf.OPTForCausalLM, lambda **k: tf.OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64,
                                                             num_hidden_layers=2, num_attention_heads=4,
                                                             word_embed_proj_dim=32, max_position_embeddings=64))

ENC = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
           max_position_embeddings=64)


@register("bert", "encoder")
def bert():
    return _hidden(tf.BertModel, tf.BertConfig(**ENC), ["input_ids"], (_ids(),))


@register("deberta-v2", "encoder")
def deberta_v2():
    cfg = tf.DebertaV2Config(**ENC, relative_attention=True, position_buckets=16, pos_att_type=["c2p", "p2c"],
                             max_relative_positions=32)
    return _hidden(tf.DebertaV2Model, cfg, ["input_ids"], (_ids(),))


@register("t5", "seq2seq")
def t5():
    cfg = tf.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, decoder_start_token_id=0)
    return _hidden(tf.T5ForConditionalGeneration, cfg, ["input_ids", "decoder_input_ids"], (_ids(), _ids(4)),
                   "logits")


@register("bart", "seq2seq")
def bart():
    cfg = tf.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64)
    return _hidden(tf.BartForConditionalGeneration, cfg, ["input_ids", "decoder_input_ids"], (_ids(), _ids(4)),
                   "logits")


def _image(size=32, channels=3):
    return (torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(0)),)


@register("vit", "vision")
def vit():
    cfg = tf.ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       image_size=32, patch_size=8)
    return _hidden(tf.ViTModel, cfg, ["pixel_values"], _image())


@register("swin", "vision")
def swin():
    cfg = tf.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4)
    return _hidden(tf.SwinModel, cfg, ["pixel_values"], _image())


@register("beit", "vision")
def beit():
    cfg = tf.BeitConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, image_size=32, patch_size=8, use_relative_position_bias=True)
    return _hidden(tf.BeitModel, cfg, ["pixel_values"], _image())


@register("siglip-vision", "vision")
def siglip_vision():
    cfg = tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=32, patch_size=8)
    return _hidden(tf.SiglipVisionModel, cfg, ["pixel_values"], _image())


@register("mobilevit", "conv")
def mobilevit():
    cfg = tf.MobileViTConfig(image_size=32, patch_size=2, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16,
                             24, 32, 64], num_attention_heads=2)
    return _hidden(tf.MobileViTModel, cfg, ["pixel_values"], _image())


@register("convnext", "conv")
def convnext():
    cfg = tf.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], image_size=32)
    return _hidden(tf.ConvNextModel, cfg, ["pixel_values"], _image())


@register("segformer", "conv")
def segformer():
    cfg = tf.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                             patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                             decoder_hidden_size=32, num_labels=3)
    return _hidden(tf.SegformerForSemanticSegmentation, cfg, ["pixel_values"], _image(), "logits")


def _audio(n=1600):
    return (torch.randn(1, n, generator=torch.Generator().manual_seed(0)),)


AUDIO = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16,
             num_conv_pos_embedding_groups=4, vocab_size=32)


@register("wav2vec2", "audio")
def wav2vec2():
    return _hidden(tf.Wav2Vec2Model, tf.Wav2Vec2Config(**AUDIO), ["input_values"], _audio())


@register("hubert", "audio")
def hubert():
    return _hidden(tf.HubertModel, tf.HubertConfig(**AUDIO), ["input_values"], _audio())


@register("whisper-encoder", "audio")
def whisper_encoder():
    cfg = tf.WhisperConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                           decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=16, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    model = tf.WhisperModel(_eager(cfg)).eval()
    feats = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(0))
    return MainOutput(model.encoder, ["input_features"], "last_hidden_state"), (feats,)


# -- more of the same kinds (held out from the list) -----------------------------------
_decoder("gpt-j", tf.GPTJForCausalLM, lambda **k: tf.GPTJConfig(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                                                 rotary_dim=4, n_positions=64))
_decoder("codegen", tf.CodeGenForCausalLM, lambda **k: tf.CodeGenConfig(vocab_size=VOCAB, n_embd=32, n_layer=2,
                                                                         n_head=4, rotary_dim=4, n_positions=64,
                                                                         n_ctx=64))
_decoder("gpt-bigcode", tf.GPTBigCodeForCausalLM, lambda **k: tf.GPTBigCodeConfig(vocab_size=VOCAB, n_embd=32,
                                                                                   n_layer=2, n_head=4,
                                                                                   n_positions=64, multi_query=True))
_decoder("olmo", tf.OlmoForCausalLM, tf.OlmoConfig, num_key_value_heads=2, pad_token_id=0)
_decoder("stablelm", tf.StableLmForCausalLM, tf.StableLmConfig, num_key_value_heads=2)
_decoder("starcoder2", tf.Starcoder2ForCausalLM, tf.Starcoder2Config, num_key_value_heads=2)
_decoder("mixtral", tf.MixtralForCausalLM, tf.MixtralConfig, num_key_value_heads=2, num_local_experts=4,
         num_experts_per_tok=2)
_decoder("mpt", tf.MptForCausalLM, lambda **k: tf.MptConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4,
                                                             max_seq_len=64))


def _encoder(name, cls, cfg):
    register(name, "encoder")(lambda: _hidden(cls, cfg(), ["input_ids"], (_ids(),)))


_encoder("roberta", tf.RobertaModel, lambda: tf.RobertaConfig(**ENC, pad_token_id=1))
_encoder("distilbert", tf.DistilBertModel, lambda: tf.DistilBertConfig(vocab_size=VOCAB, dim=32, hidden_dim=64,
                                                                      n_layers=2, n_heads=4,
                                                                      max_position_embeddings=64))
_encoder("albert", tf.AlbertModel, lambda: tf.AlbertConfig(**ENC, embedding_size=16))
_encoder("electra", tf.ElectraModel, lambda: tf.ElectraConfig(**ENC, embedding_size=16))
_encoder("xlnet", tf.XLNetModel, lambda: tf.XLNetConfig(vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4,
                                                        d_inner=64))


def _vision(name, family, cls, cfg, field="last_hidden_state"):
    register(name, family)(lambda: _hidden(cls, cfg(), ["pixel_values"], _image(), field))


_vision("deit", "vision", tf.DeiTModel, lambda: tf.DeiTConfig(hidden_size=32, intermediate_size=64,
                                                              num_hidden_layers=2, num_attention_heads=4,
                                                              image_size=32, patch_size=8))
_vision("dinov2", "vision", tf.Dinov2Model, lambda: tf.Dinov2Config(hidden_size=32, num_hidden_layers=2,
                                                                    num_attention_heads=4, image_size=32,
                                                                    patch_size=8, mlp_ratio=2))
_vision("convnextv2", "conv", tf.ConvNextV2Model, lambda: tf.ConvNextV2Config(hidden_sizes=[8, 16, 24, 32],
                                                                              depths=[1, 1, 1, 1]))
_vision("poolformer", "conv", tf.PoolFormerModel, lambda: tf.PoolFormerConfig(hidden_sizes=[8, 16, 24, 32],
                                                                              depths=[1, 1, 1, 1]))
_vision("resnet", "conv", tf.ResNetModel, lambda: tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32],
                                                                  depths=[1, 1, 1, 1]))
_vision("mobilenet-v2", "conv", tf.MobileNetV2Model, lambda: tf.MobileNetV2Config(image_size=32,
                                                                                  depth_multiplier=0.25))


@register("wavlm", "audio")
def wavlm():
    return _hidden(tf.WavLMModel, tf.WavLMConfig(**AUDIO, num_buckets=16, max_bucket_distance=40),
                   ["input_values"], _audio())


@register("data2vec-audio", "audio")
def data2vec_audio():
    return _hidden(tf.Data2VecAudioModel, tf.Data2VecAudioConfig(**AUDIO), ["input_values"], _audio())


@register("marian", "seq2seq")
def marian():
    cfg = tf.MarianConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                          decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                          max_position_embeddings=64, pad_token_id=0, decoder_start_token_id=0)
    return _hidden(tf.MarianMTModel, cfg, ["input_ids", "decoder_input_ids"], (_ids(), _ids(4)), "logits")


@register("mt5", "seq2seq")
def mt5():
    cfg = tf.MT5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                       relative_attention_num_buckets=8, decoder_start_token_id=0)
    return _hidden(tf.MT5ForConditionalGeneration, cfg, ["input_ids", "decoder_input_ids"], (_ids(), _ids(4)),
                   "logits")


@register("clip-text", "encoder")
def clip_text():
    cfg = tf.CLIPTextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=64, eos_token_id=2, bos_token_id=1,
                            pad_token_id=0)
    return _hidden(tf.CLIPTextModel, cfg, ["input_ids"], (_ids(),))
