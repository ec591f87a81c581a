"""hitcnn's audio pipeline: audio files on disk -> cached, labelled, split image arrays.

Data flow (one module per step):

- :mod:`pipeline.audio` -- ``load(path, sr, mono, offset, duration)``: soundfile
  (seeking to the clip) with an audioread fallback, mono mean;
  :mod:`pipeline.decoder_messages` captures the decoder's stderr around it.
- :mod:`pipeline.resample` -- the polyphase Kaiser-sinc resampler (Numba kernel
  for integer decimation).
- :mod:`pipeline.stft` -- ``stft(y, n_fft, hop_length, window, center, pad_mode)``,
  equal to ``librosa.stft``: calls down into ``kernels.cpu.stft`` / ``kernels.gpu.stft``.
- :mod:`pipeline.spectral` -- dB (librosa conventions), Slaney mel, resize operators.
- :mod:`pipeline.spectrogram` -- ``SpectrogramConfig`` and the image transform's
  two halves (``spectrogram_db`` -> ``mono_image`` -> ``quantize``; ``model_input``).
- :mod:`pipeline.clips` -- one file's clip (``clip``, ``track_clip``) and
  ``track_images`` (the whole chain for ``predict``).
- :mod:`pipeline.windows` -- the crop windows cut at read time (``Windows``).
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
- :mod:`pipeline.sources` -- the data source the command-line flags name, and
  its dataset (``prepare_data``).

Every failure raises :class:`pipeline.errors.PipelineError` naming the file,
column or parameter.
"""
