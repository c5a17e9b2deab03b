//! `wordcount`: counts, across every file under `corpus/` (a folder input), how often each
//! word given on standard input (the manifest's `stdin` file) occurs.
//!
//! Writes `out/counts.txt` (`<word> <count>` per line, in the order asked) and prints
//! `<files> files, <words> words read; <word>=<count> …`. The per-file counts go through a
//! file in `$TMPDIR` first, as real programs use their temporary folder. Exit 1 on any I/O
//! error, 2 when standard input names no word.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err((code, message)) => {
            eprintln!("wordcount: error: {message}");
            ExitCode::from(code)
        }
    }
}

fn run() -> Result<String, (u8, String)> {
    let io = |what: String| move |e: std::io::Error| (1, format!("{what}: {e}"));
    let mut query = String::new();
    std::io::stdin()
        .read_to_string(&mut query)
        .map_err(io("reading standard input".into()))?;
    let wanted: Vec<String> = words(&query).collect();
    if wanted.is_empty() {
        return Err((2, "standard input names no word to count".into()));
    }
    let mut files = Vec::new();
    walk(Path::new("corpus"), &mut files).map_err(io("listing corpus/".into()))?;
    files.sort();

    // Per-file counts through a temporary file, then summed.
    let tmp = PathBuf::from(std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into()));
    let scratch = tmp.join("wordcount-partial.txt");
    let mut partial =
        std::fs::File::create(&scratch).map_err(io(format!("creating {}", scratch.display())))?;
    let mut read = 0usize;
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(io(format!("reading {}", f.display())))?;
        for w in words(&text) {
            read += 1;
            if wanted.contains(&w) {
                writeln!(partial, "{w}").map_err(io("writing the partial counts".into()))?;
            }
        }
    }
    drop(partial);
    let mut counts: BTreeMap<&str, u64> = wanted.iter().map(|w| (w.as_str(), 0)).collect();
    let partial = std::fs::read_to_string(&scratch).map_err(io("reading back".into()))?;
    for w in partial.lines() {
        if let Some(c) = counts.get_mut(w) {
            *c += 1;
        }
    }
    let _ = std::fs::remove_file(&scratch);

    let mut table = String::new();
    let mut line = format!("{} files, {read} words read;", files.len());
    for w in &wanted {
        let c = counts[w.as_str()];
        table.push_str(&format!("{w} {c}\n"));
        line.push_str(&format!(" {w}={c}"));
    }
    std::fs::create_dir_all("out")
        .and_then(|()| std::fs::write("out/counts.txt", table))
        .map_err(io("writing out/counts.txt".into()))?;
    Ok(line)
}

/// Lower-case words of letters.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            walk(&entry.path(), files)?;
        } else {
            files.push(entry.path());
        }
    }
    Ok(())
}
