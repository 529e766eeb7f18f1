"""The domain of the Aleph pipeline: sidecars, jobs, storage and provider adapters.

Handlers under ``functions/`` are thin: they parse an AWS event, call one function of this
package, and shape the answer.
"""
