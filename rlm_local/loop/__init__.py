"""One run of the loop: the root model's conversation, its prompts and format, reading its replies, final
answers, steering a small model, implicit batching of sibling calls, and persistent sessions.

Data flows one way: ``rlm.RLM`` makes a :class:`~rlm_local.loop.run.Run`; the run talks to the engines through
``scheduling`` and runs cells in a ``sandbox`` session, and reports what happened through ``runlog``.
"""
