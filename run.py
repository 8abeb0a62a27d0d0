"""Train a GPT: `python run.py [group=option ...] [key=value ...]`, or `python run.py -m ...` to sweep,
or `torchrun --nproc_per_node=N run.py hardware=ddp ...` for data-parallel ranks.

The app is fragment_llm/launch/hydra_app.py (also `fragment-llm train ...`); Hydra composes the
config from conf/, and everything below the app works on validated plain settings.
"""

from fragment_llm.launch.hydra_app import main  # first: it sets the signal handlers before importing torch

if __name__ == "__main__":
    main()
