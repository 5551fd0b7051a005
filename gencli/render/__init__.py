"""Everything gencli shows a person, one module per view: streamed text (`text`), the stats lines
(`stats`), cache tables (`cache`), and one module for each command's own report. Shared pieces live in
`console` (consoles, JSON, labels) and `words` (wording, free of rich, for the command line too).

Generated text is written raw, never through rich markup, so `[brackets]` in it survive and pipes
receive exactly the model's text. rich drops colour by itself when its stream is not a terminal.
"""
