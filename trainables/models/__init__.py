"""The model registry and every architecture, moved unchanged into ``resnets`` (its largest part
after the split by family that follows), re-exported here so imports stay as they were."""

from trainables.models.resnets import *  # noqa: F403
