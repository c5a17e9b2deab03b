//! `mandelbrot [WIDTH HEIGHT MAX_ITER]`: renders band `RJS_TASK_INDEX` of `RJS_TASK_COUNT` of
//! the Mandelbrot set to `out/tile-<index>.png` and prints a one-line summary.

use std::process::ExitCode;

use rjs_sample_mandelbrot as mandelbrot;

const USAGE: &str = "usage: mandelbrot [WIDTH HEIGHT MAX_ITER]   (defaults 1024 1024 1000)
environment: RJS_TASK_INDEX (default 0), RJS_TASK_COUNT (default 1);
renders rows INDEX*HEIGHT/COUNT .. (INDEX+1)*HEIGHT/COUNT to out/tile-INDEX.png";

/// Exit code for a bad command line or environment.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let mut args = Vec::new();
    for arg in std::env::args_os().skip(1) {
        match arg.into_string() {
            Ok(s) if s == "-h" || s == "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            Ok(s) => args.push(s),
            Err(raw) => return usage_error(&format!("argument {raw:?} is not valid UTF-8")),
        }
    }
    let params = match mandelbrot::parse_args(&args) {
        Ok(p) => p,
        Err(e) => return usage_error(&e.to_string()),
    };
    let index = match env_var("RJS_TASK_INDEX") {
        Ok(v) => v,
        Err(e) => return usage_error(&e),
    };
    let count = match env_var("RJS_TASK_COUNT") {
        Ok(v) => v,
        Err(e) => return usage_error(&e),
    };
    let task = match mandelbrot::parse_task(index.as_deref(), count.as_deref(), params.height) {
        Ok(t) => t,
        Err(e) => return usage_error(&e.to_string()),
    };

    let tile = mandelbrot::render_task(&params, &task);
    let path = mandelbrot::tile_path(task.index);
    let result = mandelbrot::encode_png(&tile)
        .map_err(|e| format!("encoding the PNG: {e}"))
        .and_then(|png| {
            std::fs::create_dir_all("out").map_err(|e| format!("creating out/: {e}"))?;
            std::fs::write(&path, png).map_err(|e| format!("writing {path}: {e}"))
        });
    if let Err(e) = result {
        eprintln!("mandelbrot: error: {e}");
        return ExitCode::FAILURE;
    }
    println!("{}", mandelbrot::summary(&params, &task, &tile, &path));
    ExitCode::SUCCESS
}

/// An environment variable: `None` when unset, an error when not valid UTF-8.
fn env_var(name: &str) -> Result<Option<String>, String> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(raw)) => Err(format!(
            "environment variable {name}={raw:?} is not valid UTF-8"
        )),
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("mandelbrot: error: {message}\n{USAGE}");
    ExitCode::from(EXIT_USAGE)
}
