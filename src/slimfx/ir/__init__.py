"""The values the passes hand each other: channel layouts, the channel graph, pruned values.

Nothing here imports a rule or a pass; every other part of slimfx may import from here.
"""
