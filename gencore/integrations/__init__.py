"""gencore.integrations: adapters to other libraries' extension points.

Each submodule imports only gencore.ops / gencore.nn and its own optional dependency, which stays
optional: `import gencore` never imports one. `gencore.integrations.transformers` registers
attn_implementation="gencore" with Hugging Face transformers when imported.
"""
