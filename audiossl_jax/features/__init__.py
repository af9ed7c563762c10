"""Waveform -> log-mel front ends (`kaldi_fbank`, `log_mel`, chosen by name in `frontends`) and
per-bin normalisation statistics (`stats`)."""
