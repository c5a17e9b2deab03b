//! What a job's WebAssembly module may use, checked without compiling it.
//!
//! Every node's sandbox (`rjs-compute`) enables exactly [`FEATURES`] in its wasmtime engine and
//! links exactly the WASI preview 1 functions in [`WASI_P1`] (a test in `rjs-compute` holds
//! both to the engine and the linker). [`check_module`] applies the same rules with
//! wasmparser — the parser wasmtime itself validates with — so that `rjs-sign pack`,
//! `rjs-sign verify`, the web server's upload and the node's own verification refuse a module
//! the nodes would refuse, with the first reason, before any node compiles it. Why each
//! feature is on or off: `docs/sandbox.md`, "WebAssembly features".

use crate::manifest::shown_field;
use wasmparser::{
    CompositeInnerType, Payload, ValType, Validator, WasmFeatures,
    types::{EntityType, TypesRef},
};

/// The WebAssembly features the sandbox enables: the Wasm 3.0 standard as wasmtime 48
/// supports it stably (Wasm 2.0 — bulk memory, reference types, sign extension, saturating
/// conversions, multi-value, fixed SIMD — plus exception handling, tail calls, extended
/// constant expressions, typed function references, GC, multi-memory, memory64 and relaxed
/// SIMD), without threads: WASI preview 1 has no way to start a thread, so shared memory and
/// atomics only ever come with `wasi-threads`, which the sandbox does not provide.
pub const FEATURES: WasmFeatures = WasmFeatures::WASM3
    .difference(WasmFeatures::THREADS)
    // wasmparser's pseudo-feature for the GC proposal's types, which exception handling's
    // `exnref` also needs; wasmtime turns it on with its `gc` crate feature.
    .union(WasmFeatures::GC_TYPES);

/// Most linear memories a module may define (multi-memory); the nodes' instance pool is sized
/// for it. A job's `memory_bytes` limits all of them together.
pub const MAX_MEMORIES: u32 = 4;
/// Most tables a module may define.
pub const MAX_TABLES: u32 = 8;

/// The module every function of WASI preview 1 is imported from.
pub const WASI_MODULE: &str = "wasi_snapshot_preview1";

/// A parameter or result of a WASI preview 1 function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WasiType {
    I32,
    I64,
}

use WasiType::{I32, I64};

/// One WASI preview 1 function: name, parameters, results.
pub type WasiFunction = (&'static str, &'static [WasiType], &'static [WasiType]);

/// Every function of WASI preview 1 (`wasi_snapshot_preview1`) the sandbox links, with its
/// core signature. The networking calls are linked but always fail: preview 1 cannot open a
/// socket, and the sandbox grants none.
pub const WASI_P1: &[WasiFunction] = &[
    ("args_get", &[I32, I32], &[I32]),
    ("args_sizes_get", &[I32, I32], &[I32]),
    ("environ_get", &[I32, I32], &[I32]),
    ("environ_sizes_get", &[I32, I32], &[I32]),
    ("clock_res_get", &[I32, I32], &[I32]),
    ("clock_time_get", &[I32, I64, I32], &[I32]),
    ("fd_advise", &[I32, I64, I64, I32], &[I32]),
    ("fd_allocate", &[I32, I64, I64], &[I32]),
    ("fd_close", &[I32], &[I32]),
    ("fd_datasync", &[I32], &[I32]),
    ("fd_fdstat_get", &[I32, I32], &[I32]),
    ("fd_fdstat_set_flags", &[I32, I32], &[I32]),
    ("fd_fdstat_set_rights", &[I32, I64, I64], &[I32]),
    ("fd_filestat_get", &[I32, I32], &[I32]),
    ("fd_filestat_set_size", &[I32, I64], &[I32]),
    ("fd_filestat_set_times", &[I32, I64, I64, I32], &[I32]),
    ("fd_pread", &[I32, I32, I32, I64, I32], &[I32]),
    ("fd_prestat_get", &[I32, I32], &[I32]),
    ("fd_prestat_dir_name", &[I32, I32, I32], &[I32]),
    ("fd_pwrite", &[I32, I32, I32, I64, I32], &[I32]),
    ("fd_read", &[I32, I32, I32, I32], &[I32]),
    ("fd_readdir", &[I32, I32, I32, I64, I32], &[I32]),
    ("fd_renumber", &[I32, I32], &[I32]),
    ("fd_seek", &[I32, I64, I32, I32], &[I32]),
    ("fd_sync", &[I32], &[I32]),
    ("fd_tell", &[I32, I32], &[I32]),
    ("fd_write", &[I32, I32, I32, I32], &[I32]),
    ("path_create_directory", &[I32, I32, I32], &[I32]),
    ("path_filestat_get", &[I32, I32, I32, I32, I32], &[I32]),
    (
        "path_filestat_set_times",
        &[I32, I32, I32, I32, I64, I64, I32],
        &[I32],
    ),
    ("path_link", &[I32, I32, I32, I32, I32, I32, I32], &[I32]),
    (
        "path_open",
        &[I32, I32, I32, I32, I32, I64, I64, I32, I32],
        &[I32],
    ),
    ("path_readlink", &[I32, I32, I32, I32, I32, I32], &[I32]),
    ("path_remove_directory", &[I32, I32, I32], &[I32]),
    ("path_rename", &[I32, I32, I32, I32, I32, I32], &[I32]),
    ("path_symlink", &[I32, I32, I32, I32, I32], &[I32]),
    ("path_unlink_file", &[I32, I32, I32], &[I32]),
    ("poll_oneoff", &[I32, I32, I32, I32], &[I32]),
    ("proc_exit", &[I32], &[]),
    ("proc_raise", &[I32], &[I32]),
    ("sched_yield", &[], &[I32]),
    ("random_get", &[I32, I32], &[I32]),
    ("sock_accept", &[I32, I32, I32], &[I32]),
    ("sock_recv", &[I32, I32, I32, I32, I32, I32], &[I32]),
    ("sock_send", &[I32, I32, I32, I32, I32], &[I32]),
    ("sock_shutdown", &[I32, I32], &[I32]),
];

/// Why a module cannot run in the sandbox. The message is the first reason found, with what
/// to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    #[error(
        "it is a WebAssembly component, not a core module: build for WASI preview 1 \
         (for example the `wasm32-wasip1` target)"
    )]
    Component,
    #[error("it is not valid WebAssembly for the grid's sandbox: {0}")]
    Invalid(String),
    #[error(
        "it imports `{module}::{name}`, which the sandbox does not provide (only WASI \
         preview 1 functions from `{WASI_MODULE}` are linked)"
    )]
    UnknownImport { module: String, name: String },
    #[error(
        "it imports `{WASI_MODULE}::{name}` as {found}, but WASI preview 1 defines it as \
         {expected}"
    )]
    ImportType {
        name: String,
        found: String,
        expected: String,
    },
    #[error("it exports no `_start` function: build it as a command (a program with `main`)")]
    NoStart,
    #[error("its `_start` export must be a function taking and returning nothing, not {0}")]
    StartType(String),
    #[error("it has {count} {what}; the sandbox allows at most {max}")]
    TooMany {
        what: &'static str,
        count: u32,
        max: u32,
    },
}

/// What [`check_module`] learnt about a valid module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Functions defined or imported.
    pub functions: u32,
    pub memories: u32,
    /// WASI functions imported.
    pub wasi_imports: usize,
}

/// Checks a module as a node would before compiling it: the binary is a core module and
/// valid with exactly [`FEATURES`] (function bodies included), it imports only [`WASI_P1`]
/// functions with their signatures, exports `_start: [] -> []`, and has at most
/// [`MAX_MEMORIES`] memories and [`MAX_TABLES`] tables. Nothing is compiled.
pub fn check_module(bytes: &[u8]) -> Result<ModuleInfo, ModuleError> {
    if let Some(Ok(Payload::Version {
        encoding: wasmparser::Encoding::Component,
        ..
    })) = wasmparser::Parser::new(0).parse_all(bytes).next()
    {
        return Err(ModuleError::Component);
    }
    let types = Validator::new_with_features(FEATURES)
        .validate_all(bytes)
        .map_err(|e| ModuleError::Invalid(explain(&e)))?;
    let types = types.as_ref();
    let mut wasi_imports = 0;
    for (module, name, ty) in types.core_imports().into_iter().flatten() {
        let expected = (module == WASI_MODULE)
            .then(|| WASI_P1.iter().find(|(n, _, _)| *n == name))
            .flatten();
        let Some((_, params, results)) = expected else {
            return Err(ModuleError::UnknownImport {
                module: shown_field(module),
                name: shown_field(name),
            });
        };
        let expected = signature(params, results);
        let found = entity(&types, ty);
        if found != expected {
            return Err(ModuleError::ImportType {
                name: shown_field(name),
                found,
                expected,
            });
        }
        wasi_imports += 1;
    }
    let start = types
        .core_exports()
        .into_iter()
        .flatten()
        .find(|(name, _)| *name == "_start")
        .map(|(_, ty)| entity(&types, ty))
        .ok_or(ModuleError::NoStart)?;
    if start != signature(&[], &[]) {
        return Err(ModuleError::StartType(start));
    }
    let (memories, tables) = (types.memory_count(), types.table_count());
    if memories > MAX_MEMORIES {
        return Err(ModuleError::TooMany {
            what: "memories",
            count: memories,
            max: MAX_MEMORIES,
        });
    }
    if tables > MAX_TABLES {
        return Err(ModuleError::TooMany {
            what: "tables",
            count: tables,
            max: MAX_TABLES,
        });
    }
    Ok(ModuleInfo {
        functions: types.function_count(),
        memories,
        wasi_imports,
    })
}

/// The smallest command the sandbox accepts: `_start` does nothing and exits 0. `padding`
/// goes into a custom section (`pad`), which makes the module as large as a test needs
/// without changing what it does. For tests and benchmarks of everything but the sandbox.
pub fn empty_command(padding: &[u8]) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    // (type (func)) (func (type 0)) (export "_start" (func 0)) (code: no locals, end)
    m.extend_from_slice(&[1, 4, 1, 0x60, 0, 0, 3, 2, 1, 0]);
    m.extend_from_slice(&[7, 10, 1, 6, b'_', b's', b't', b'a', b'r', b't', 0, 0]);
    m.extend_from_slice(&[10, 4, 1, 2, 0, 0x0b]);
    if !padding.is_empty() {
        m.push(0);
        leb(4 + padding.len(), &mut m);
        m.extend_from_slice(b"\x03pad");
        m.extend_from_slice(padding);
    }
    m
}

/// wasmparser's message, with the feature to blame spelled out when it names one.
fn explain(e: &wasmparser::BinaryReaderError) -> String {
    let message = e.message();
    let hint = if message.contains("not enabled") || message.contains("not supported without") {
        " (the sandbox enables the Wasm 3.0 features but threads; see docs/sandbox.md)"
    } else {
        ""
    };
    format!("{message} (at byte offset {:#x}){hint}", e.offset())
}

/// `(i32, i64) -> (i32)`: a function type as messages show it.
fn signature(params: &[WasiType], results: &[WasiType]) -> String {
    let list = |ts: &[WasiType]| {
        ts.iter()
            .map(|t| match t {
                I32 => "i32",
                I64 => "i64",
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("a function ({}) -> ({})", list(params), list(results))
}

/// An import's or export's type, in [`signature`]'s words.
fn entity(types: &TypesRef<'_>, ty: EntityType) -> String {
    let id = match ty {
        EntityType::Func(id) | EntityType::FuncExact(id) => id,
        EntityType::Table(_) => return "a table".into(),
        EntityType::Memory(_) => return "a memory".into(),
        EntityType::Global(_) => return "a global".into(),
        EntityType::Tag(_) => return "an exception tag".into(),
    };
    let Some(CompositeInnerType::Func(f)) = types.get(id).map(|s| &s.composite_type.inner) else {
        return "a non-function type".into();
    };
    let list = |ts: &[ValType]| {
        ts.iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "a function ({}) -> ({})",
        list(f.params()),
        list(f.results())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module from its binary sections: type section, imports, functions, memory, exports,
    /// code — enough for these tests without a text-format parser.
    fn module(sections: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        for (id, body) in sections {
            m.push(*id);
            m.push(body.len() as u8);
            m.extend_from_slice(body);
        }
        m
    }

    fn name(s: &str) -> Vec<u8> {
        let mut v = vec![s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }

    /// `(type 0 (func)) (type 1 (func (param i32) (result i32)))`, an import of `import` with
    /// type `ty`, and `_start` defined as type 0 and exported.
    fn with_import(module_name: &str, import: &str, ty: u8) -> Vec<u8> {
        let types = vec![2, 0x60, 0, 0, 0x60, 1, 0x7f, 1, 0x7f];
        let mut imports = vec![1];
        imports.extend(name(module_name));
        imports.extend(name(import));
        imports.extend([0x00, ty]);
        let mut exports = vec![1];
        exports.extend(name("_start"));
        exports.extend([0x00, 1]); // function 1 (after the import)
        module(&[
            (1, types),
            (2, imports),
            (3, vec![1, 0]),
            (7, exports),
            (10, vec![1, 2, 0, 0x0b]),
        ])
    }

    #[test]
    fn the_empty_command_is_valid_at_any_size() {
        for size in [0, 1, 127, 128, 70_000] {
            check_module(&empty_command(&vec![7; size])).unwrap();
        }
    }

    #[test]
    fn a_wasi_command_passes() {
        let info = check_module(&with_import(WASI_MODULE, "proc_raise", 1)).unwrap();
        assert_eq!(info.wasi_imports, 1);
        assert_eq!(info.functions, 2);
    }

    #[test]
    fn imports_outside_wasi_p1_or_with_the_wrong_type_are_refused() {
        let e = check_module(&with_import("env", "proc_raise", 1)).unwrap_err();
        assert!(matches!(e, ModuleError::UnknownImport { .. }), "{e}");
        let e = check_module(&with_import(WASI_MODULE, "sock_open", 1)).unwrap_err();
        assert!(e.to_string().contains("sock_open"), "{e}");
        let e = check_module(&with_import(WASI_MODULE, "proc_raise", 0)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "it imports `wasi_snapshot_preview1::proc_raise` as a function () -> (), but WASI \
             preview 1 defines it as a function (i32) -> (i32)"
        );
    }

    #[test]
    fn start_is_required_and_typed() {
        let types = vec![1, 0x60, 0, 1, 0x7f];
        let mut exports = vec![1];
        exports.extend(name("_start"));
        exports.extend([0x00, 0]);
        let m = module(&[
            (1, types.clone()),
            (3, vec![1, 0]),
            (7, exports),
            (10, vec![1, 4, 0, 0x41, 0, 0x0b]),
        ]);
        assert!(matches!(check_module(&m), Err(ModuleError::StartType(_))));
        let m = module(&[
            (1, types),
            (3, vec![1, 0]),
            (10, vec![1, 4, 0, 0x41, 0, 0x0b]),
        ]);
        assert_eq!(check_module(&m), Err(ModuleError::NoStart));
    }

    #[test]
    fn garbage_components_and_threads_are_refused() {
        assert!(matches!(
            check_module(b"\0asm\x01\0\0\0\x01\x05"),
            Err(ModuleError::Invalid(_))
        ));
        assert_eq!(
            check_module(b"\0asm\x0d\0\x01\0"),
            Err(ModuleError::Component)
        );
        // A shared memory (threads) is refused with the feature named.
        let m = module(&[(5, vec![1, 0x03, 1, 1])]);
        let e = check_module(&m).unwrap_err().to_string();
        assert!(e.contains("threads"), "{e}");
    }

    #[test]
    fn the_feature_set_is_wasm3_without_threads() {
        for f in [
            WasmFeatures::EXCEPTIONS,
            WasmFeatures::TAIL_CALL,
            WasmFeatures::EXTENDED_CONST,
            WasmFeatures::MULTI_MEMORY,
            WasmFeatures::MEMORY64,
            WasmFeatures::SIMD,
            WasmFeatures::RELAXED_SIMD,
            WasmFeatures::BULK_MEMORY,
            WasmFeatures::GC,
        ] {
            assert!(FEATURES.contains(f), "{f:?}");
        }
        for f in [
            WasmFeatures::THREADS,
            WasmFeatures::LEGACY_EXCEPTIONS,
            WasmFeatures::STACK_SWITCHING,
            WasmFeatures::CUSTOM_PAGE_SIZES,
            WasmFeatures::WIDE_ARITHMETIC,
            WasmFeatures::COMPONENT_MODEL,
        ] {
            assert!(!FEATURES.contains(f), "{f:?}");
        }
    }
}
