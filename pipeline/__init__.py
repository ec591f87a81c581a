"""hitcnn's audio pipeline: audio files on disk -> cached, labelled, split image arrays.

Data flow (one module per step):

- :mod:`pipeline.audio` -- ``load(path, sr, mono, offset, duration)``: soundfile
  (seeking to the crop) with an audioread fallback, mono mean, resample_poly.
- :mod:`pipeline.stft` -- ``stft(y, n_fft, hop_length, window, center, pad_mode)``:
  framing + periodic Hann + rfft, equal to ``librosa.stft``.
- :mod:`pipeline.spectrogram` -- dB (librosa conventions), Slaney mel,
  ``SpectrogramConfig``, ``to_image`` (102 x 159, [0, 1], mono / rgb),
  ``track_image`` (seeded random 10 s crop) and ``track_images`` (n crops, predict).
- :mod:`pipeline.fma` -- FMA ``tracks.csv`` and audio layout.
- :mod:`pipeline.labels` -- popularity buckets, genre, CSV and file-name regex labels.
- :mod:`pipeline.splits` -- stratified, FMA and group-disjoint splits.
- :mod:`pipeline.cache` -- ``build_cache`` (parallel, resumable), ``cache_hash``,
  ``FORMAT_VERSION``, ``format_report``: the dataset cache and its build.
- :mod:`pipeline.workers` -- ``Supervisor`` (worker pool with a per-task
  timeout) and ``die_with_parent``.
- :mod:`pipeline.dataset` -- ``Dataset(dir)``: the cache opened read-only
  (memmap), ``batches(...)`` cutting the crop windows at read time.
- :mod:`pipeline.prepare` -- ``prepare_fma`` / ``prepare_folder``, the entry
  points of ``cli.py preprocess``.

Every failure raises :class:`pipeline.errors.PipelineError` naming the file,
column or parameter.
"""
