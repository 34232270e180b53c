"""Model organisms: speech LLMs whose mechanism is known because it was built in.

Each organism is an Ultravox-class model made of real pretrained parts, frozen (Whisper
tiny.en's encoder and SmolLM2-135M-Instruct, obtained with `interp models get`), with only
the projector between them trained, on speech the toolkit synthesises. `cascade` is distilled
to answer as its LLM answers the transcript (implicit ASR by construction); `acoustic` also
answers a question about the voice's pitch that no transcript can answer.

- `recipe`: what each organism is built from and how (frozen `Recipe` records);
- `data`: sentences, spoken renditions, encoder frames;
- `teacher`: prompts and distillation targets from the frozen LLM;
- `train`: the CTC warm start and the distillation loop;
- `build`: recipe -> checkpoint folder with its loss curve;
- `ship`: the trained weights shipped in the package and `get` (no training);
- `evaluation`: held-out spoken items for the organisms' tasks.
"""

from interp.organisms.recipe import RECIPES, Recipe, get_recipe

__all__ = ["RECIPES", "Recipe", "get_recipe"]
