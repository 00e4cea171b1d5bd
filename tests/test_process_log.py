"""ProcessLog: each process's output in WORKDIR/logs/, appended, never rewritten."""

import logging
import os
import threading

from hcl_jax.run.process_log import ProcessLog, log_path


def test_two_writers_of_one_log_lose_no_line(tmp_path):
  """Two writers (an old process still printing and its rerun): each flush
  appends, so every line of both ends in the file, in each writer's order."""
  path = log_path(tmp_path, 0)
  # The file objects two ProcessLogs of the same workdir and process write through.
  writers = [ProcessLog(tmp_path, 0)._file, ProcessLog(tmp_path, 0)._file]
  lines_each = 400

  def write(index):
    for i in range(lines_each):
      writers[index].append(f"writer {index} line {i}\n")
      if i % 7 == 0:
        writers[index].flush()
    writers[index].close()

  threads = [threading.Thread(target=write, args=(i,)) for i in (0, 1)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=60)
  lines = path.read_text().splitlines()
  assert len(lines) == 2 * lines_each
  for index in (0, 1):
    mine = [line for line in lines if line.startswith(f"writer {index} ")]
    assert mine == [f"writer {index} line {i}" for i in range(lines_each)]


def test_a_rerun_appends_and_keeps_what_was_there(tmp_path, capsys):
  path = log_path(tmp_path, 1)
  os.makedirs(path.parent)
  path.write_text("an earlier attempt's line\n")
  with ProcessLog(tmp_path, 1, flush_every_s=0.05):
    print("printed now")
    logging.getLogger("hcl_jax.test").warning("a warning record")
  text = path.read_text()
  assert text.startswith("an earlier attempt's line\n")
  assert "printed now\n" in text and "a warning record" in text
  assert "printed now" in capsys.readouterr().out  # still on the console too
