"""What training and serving share. Importing it quiets TensorFlow's log lines (see `glasses.quiet`)."""

from glasses import quiet as _quiet

_quiet.install()
