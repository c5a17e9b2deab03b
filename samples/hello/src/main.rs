//! `hello [WORDS...]`: the smallest useful RJS job.
//!
//! Writes `out/hello-<index>.txt` containing `hello, <args joined by space> from task <i>/<n>\n`
//! (task index and count from `RJS_TASK_INDEX` / `RJS_TASK_COUNT`, defaults 0 and 1) and prints
//! the same line to stdout. Exit code 2 for a bad task environment, 1 when the file cannot be
//! written.

use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(line) => {
            print!("{line}");
            ExitCode::SUCCESS
        }
        Err((code, message)) => {
            eprintln!("hello: error: {message}");
            ExitCode::from(code)
        }
    }
}

fn run() -> Result<String, (u8, String)> {
    let words: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let index = task_var("RJS_TASK_INDEX", 0)?;
    let count = task_var("RJS_TASK_COUNT", 1)?;
    if count == 0 || index >= count {
        return Err((
            2,
            format!("RJS_TASK_INDEX {index} must be below RJS_TASK_COUNT {count} (≥ 1)"),
        ));
    }
    let line = format!("hello, {} from task {index}/{count}\n", words.join(" "));
    let path = format!("out/hello-{index}.txt");
    std::fs::create_dir_all("out")
        .and_then(|()| std::fs::write(&path, &line))
        .map_err(|e| (1, format!("writing {path}: {e}")))?;
    Ok(line)
}

fn task_var(name: &str, default: u32) -> Result<u32, (u8, String)> {
    match std::env::var_os(name) {
        None => Ok(default),
        Some(raw) => raw
            .to_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| (2, format!("invalid {name}={raw:?}: expected an integer"))),
    }
}
