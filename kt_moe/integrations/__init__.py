"""Integrations with other libraries, each an optional dependency: kt_moe.integrations.transformers
(kt-moe as the routed experts of a Hugging Face transformers model, LoRA training of the whole model)
and kt_moe.integrations.peft_adapters (the experts' LoRA as a PEFT adapter). Importing kt_moe never
imports transformers or peft; importing these modules does."""
