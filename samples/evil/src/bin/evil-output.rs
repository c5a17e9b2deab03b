//! Misbehaving job: writes far more output than any sane limit: a 1 GiB file `out/flood.bin`
//! in 1 MiB chunks, then 1 GiB to stdout. Stops at the first write error (reported on stderr)
//! and exits 3; exits 0 if nothing stopped it.

use std::fs::File;
use std::io::Write;
use std::process::ExitCode;

const CHUNK: usize = 1 << 20;
const TOTAL_CHUNKS: usize = 1024;
const EXIT_WRITE_ERROR: u8 = 3;

fn main() -> ExitCode {
    match flood() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("evil-output: stopped: {e}");
            ExitCode::from(EXIT_WRITE_ERROR)
        }
    }
}

fn flood() -> Result<(), String> {
    std::fs::create_dir_all("out").map_err(|e| format!("creating out/: {e}"))?;
    let mut file =
        File::create("out/flood.bin").map_err(|e| format!("creating out/flood.bin: {e}"))?;
    let chunk = vec![0x5Au8; CHUNK];
    for i in 0..TOTAL_CHUNKS {
        file.write_all(&chunk)
            .map_err(|e| format!("writing out/flood.bin after {i} MiB: {e}"))?;
    }
    drop(file);

    let line = b"evil-output is flooding stdout, evil-output is flooding stdout, evil-output!\n";
    let text: Vec<u8> = line.iter().copied().cycle().take(CHUNK).collect();
    let mut stdout = std::io::stdout().lock();
    for i in 0..TOTAL_CHUNKS {
        stdout
            .write_all(&text)
            .and_then(|()| stdout.flush())
            .map_err(|e| format!("writing stdout after {i} MiB: {e}"))?;
    }
    Ok(())
}
