//! Rendering an error with its cause chain, and exiting a binary on error.

use std::error::Error;
use std::fmt;
use std::process::ExitCode;

/// The error and every cause below it, outermost first, joined by `": "`.
///
/// Each layer prints its own message only (see the crate's error convention), so every cause
/// appears once. As a guard against foreign error types that do repeat their source in their
/// own message, a cause whose text the line already ends with is not printed again.
pub fn chain(err: &(dyn Error + 'static)) -> String {
    Chain(err).to_string()
}

/// [`chain`] as a [`Display`](fmt::Display) value, for `format!` and logging fields.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(e) = cause {
            let msg = e.to_string();
            if !msg.is_empty() && !line.ends_with(&msg) {
                line.push_str(": ");
                line.push_str(&msg);
            }
            cause = e.source();
        }
        f.write_str(&line)
    }
}

/// How a binary ends: `Ok(code)` exits with `code`; an error is printed as
/// `<program>: error: <chain>` on stderr and exits 1.
pub fn exit<E>(program: &str, result: Result<ExitCode, E>) -> ExitCode
where
    E: AsRef<dyn Error + 'static>,
{
    exit_with(program, result, 1)
}

/// [`exit`] for a program whose error status is not 1 (`rjs-sign` keeps 1 for "refused" and
/// exits `error_status` on any other error).
pub fn exit_with<E>(program: &str, result: Result<ExitCode, E>, error_status: u8) -> ExitCode
where
    E: AsRef<dyn Error + 'static>,
{
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{program}: error: {}", chain(e.as_ref()));
            ExitCode::from(error_status)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<dyn Error + 'static>>);
    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref()
        }
    }

    #[test]
    fn each_layer_once_outermost_first() {
        let e = Layer(
            "uploading bundle",
            Some(Box::new(Layer(
                "connecting to https://ws:8443",
                Some(Box::new(Layer("connection refused", None))),
            ))),
        );
        assert_eq!(
            chain(&e),
            "uploading bundle: connecting to https://ws:8443: connection refused"
        );
    }

    #[test]
    fn a_cause_repeated_by_a_foreign_layer_is_printed_once() {
        let e = Layer(
            "request failed: connection refused",
            Some(Box::new(Layer("connection refused", None))),
        );
        assert_eq!(chain(&e), "request failed: connection refused");
    }

    #[test]
    fn anyhow_style_boxed_errors_render() {
        let e: Box<dyn Error> = Box::new(Layer("top", Some(Box::new(Layer("root", None)))));
        assert_eq!(chain(e.as_ref()), "top: root");
    }
}
