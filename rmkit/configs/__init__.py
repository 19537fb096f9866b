"""The settings of every command, one module per job module (``rmkit.configs.audit`` beside ``rmkit.audit``), as TRL
keeps a config beside each trainer. They import neither torch nor transformers, so ``rmkit <command> --help`` and the
checks of a config run in a fraction of a second, before any model loads. Each job module re-exports its settings
(``from rmkit.audit import AuditConfig`` works as before)."""
