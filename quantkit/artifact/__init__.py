"""What an artifact folder is: its name (naming.py, which the planner's run command uses
too), the output folder (checked before work, built in `.partial`, renamed when done), its
non-weight files (tokenizer, templates, configs), `manifest.json`, the model card and the
Ollama Modelfile.

Takes file paths, a `SourceModel` and the records other stages produce; returns files on disk.
It makes no weights (backends), runs no check (inspection) and measures nothing (evaluation)."""
