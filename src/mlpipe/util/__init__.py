"""Plumbing shared by the stages and tools: atomic files, reading tables, file names, git,
Markdown, param messages, the stage entry point, TensorFlow set-up."""
