"""The Matrix side: the appservice, intents, commands' entry point. The only package that
imports mautrix."""
