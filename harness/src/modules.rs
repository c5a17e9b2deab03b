//! WebAssembly modules built for tests, byte by byte with `wasm-encoder` (no toolchain
//! needed): one that uses the Wasm 3.0 features a current toolchain emits, ones the grid must
//! refuse before any node sees them, ones whose memories or GC heap pass a limit, and large
//! ones that take long to compile but are generated in milliseconds.

use std::borrow::Cow;

use wasm_encoder::{
    BlockType, Catch, CodeSection, ConstExpr, DataSection, EntityType, ExportKind, ExportSection,
    Function, FunctionSection, HeapType, ImportSection, Instruction as I, MemArg, MemorySection,
    MemoryType, Module, RefType, StorageType, TableSection, TableType, TagKind, TagSection,
    TagType, TypeSection, ValType,
};

const WASI: &str = "wasi_snapshot_preview1";

fn memory(pages: u64) -> MemoryType {
    MemoryType {
        minimum: pages,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    }
}

fn mem(memory_index: u32, offset: u64) -> MemArg {
    MemArg {
        offset,
        align: 2,
        memory_index,
    }
}

/// A WASI command that uses exception handling (`try_table` catching a `throw` whose
/// payload it keeps), a tail call (`return_call`), two memories (multi-memory) and SIMD: it
/// prints `caught\n` and exits with 42, computed as 22 (the exception's payload) + 20 (read
/// back from the second memory), passed through the tail call and a SIMD lane. Any feature
/// missing in the engine refuses it; any one executed wrongly changes the exit code.
pub fn modern_command() -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([], []); // 0: _start
    types.ty().function([ValType::I32], []); // 1: proc_exit, the tag
    types
        .ty()
        .function([ValType::I32, ValType::I32], [ValType::I32]); // 2: adders
    types.ty().function([ValType::I32; 4], [ValType::I32]); // 3: fd_write
    let mut imports = ImportSection::new();
    imports.import(WASI, "proc_exit", EntityType::Function(1)); // func 0
    imports.import(WASI, "fd_write", EntityType::Function(3)); // func 1
    let mut functions = FunctionSection::new();
    functions.function(0); // 2: _start
    functions.function(2); // 3: tail-calls 4
    functions.function(2); // 4: adds
    let mut memories = MemorySection::new();
    memories.memory(memory(1));
    memories.memory(memory(1));
    let mut tags = TagSection::new();
    tags.tag(TagType {
        kind: TagKind::Exception,
        func_type_idx: 1,
    });
    let mut exports = ExportSection::new();
    exports.export("_start", ExportKind::Func, 2);
    exports.export("memory", ExportKind::Memory, 0);

    let mut start = Function::new([(1, ValType::I32)]);
    for i in [
        // 20 into the second memory.
        I::I32Const(0),
        I::I32Const(20),
        I::I32Store(mem(1, 0)),
        // 22 thrown, caught with its payload.
        I::Block(BlockType::Result(ValType::I32)),
        I::TryTable(
            BlockType::Empty,
            Cow::Owned(vec![Catch::One { tag: 0, label: 0 }]),
        ),
        I::I32Const(22),
        I::Throw(0),
        I::End,
        I::Unreachable,
        I::End,
        // + 20 from the second memory, through the tail call.
        I::I32Const(0),
        I::I32Load(mem(1, 0)),
        I::Call(3),
        // Through a SIMD lane.
        I::I32x4Splat,
        I::I32x4ExtractLane(3),
        I::LocalSet(0),
        // "caught\n" (data at 16) to stdout: an iovec at 0.
        I::I32Const(0),
        I::I32Const(16),
        I::I32Store(mem(0, 0)),
        I::I32Const(0),
        I::I32Const(7),
        I::I32Store(mem(0, 4)),
        I::I32Const(1),
        I::I32Const(0),
        I::I32Const(1),
        I::I32Const(8),
        I::Call(1),
        I::Drop,
        I::LocalGet(0),
        I::Call(0),
        I::End,
    ] {
        start.instruction(&i);
    }
    let mut tail = Function::new([]);
    for i in [I::LocalGet(0), I::LocalGet(1), I::ReturnCall(4), I::End] {
        tail.instruction(&i);
    }
    let mut add = Function::new([]);
    for i in [I::LocalGet(0), I::LocalGet(1), I::I32Add, I::End] {
        add.instruction(&i);
    }
    let mut code = CodeSection::new();
    code.function(&start).function(&tail).function(&add);
    let mut data = DataSection::new();
    data.active(0, &ConstExpr::i32_const(16), b"caught\n".iter().copied());

    let mut m = Module::new();
    m.section(&types)
        .section(&imports)
        .section(&functions)
        .section(&memories)
        .section(&tags)
        .section(&exports)
        .section(&code)
        .section(&data);
    m.finish()
}

/// A command whose `_start` calls `module::name`, imported as a function `() -> ()`: for
/// imports the sandbox does not provide.
pub fn importing(module: &str, name: &str) -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([], []);
    let mut imports = ImportSection::new();
    imports.import(module, name, EntityType::Function(0));
    let mut functions = FunctionSection::new();
    functions.function(0);
    let mut exports = ExportSection::new();
    exports.export("_start", ExportKind::Func, 1);
    let mut start = Function::new([]);
    start.instruction(&I::Call(0)).instruction(&I::End);
    let mut code = CodeSection::new();
    code.function(&start);
    let mut m = Module::new();
    m.section(&types)
        .section(&imports)
        .section(&functions)
        .section(&exports)
        .section(&code);
    m.finish()
}

/// A command with a shared memory: needs the threads feature, which the sandbox leaves off.
pub fn with_shared_memory() -> Vec<u8> {
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        maximum: Some(1),
        shared: true,
        ..memory(1)
    });
    command_with(Some(memories), [I::End])
}

/// A command with two memories that grows each by `pages` (64 KiB each): with a job memory
/// limit below `2 × (pages + 1)` pages only the memories together pass it.
pub fn two_memories_growing(pages: i32) -> Vec<u8> {
    let mut memories = MemorySection::new();
    memories.memory(memory(1)).memory(memory(1));
    command_with(
        Some(memories),
        [
            I::I32Const(pages),
            I::MemoryGrow(0),
            I::Drop,
            I::I32Const(pages),
            I::MemoryGrow(1),
            I::Drop,
            I::End,
        ],
    )
}

/// A command that allocates GC arrays of `ints` 32-bit integers, `count` of them, each kept
/// alive in a table: a GC-heap bomb when `ints × 4 × count` is above the job's memory limit.
pub fn gc_arrays(ints: i32, count: i32) -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().array(&StorageType::Val(ValType::I32), true); // 0
    types.ty().function([], []); // 1
    let mut tables = TableSection::new();
    tables.table(TableType {
        element_type: RefType {
            nullable: true,
            heap_type: HeapType::Concrete(0),
        },
        table64: false,
        minimum: count as u64,
        maximum: None,
        shared: false,
    });
    let mut functions = FunctionSection::new();
    functions.function(1);
    let mut exports = ExportSection::new();
    exports.export("_start", ExportKind::Func, 0);
    let mut start = Function::new([(1, ValType::I32)]);
    for i in [
        I::Loop(BlockType::Empty),
        I::LocalGet(0),
        I::I32Const(ints),
        I::ArrayNewDefault(0),
        I::TableSet(0),
        I::LocalGet(0),
        I::I32Const(1),
        I::I32Add,
        I::LocalTee(0),
        I::I32Const(count),
        I::I32LtU,
        I::BrIf(0),
        I::End,
        I::End,
    ] {
        start.instruction(&i);
    }
    let mut code = CodeSection::new();
    code.function(&start);
    let mut m = Module::new();
    m.section(&types)
        .section(&functions)
        .section(&tables)
        .section(&exports)
        .section(&code);
    m.finish()
}

/// A command `(type (func)) (func (export "_start") body)` with the given memories.
fn command_with<'a>(
    memories: Option<MemorySection>,
    body: impl IntoIterator<Item = I<'a>>,
) -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([], []);
    let mut functions = FunctionSection::new();
    functions.function(0);
    let mut exports = ExportSection::new();
    exports.export("_start", ExportKind::Func, 0);
    let mut start = Function::new([]);
    for i in body {
        start.instruction(&i);
    }
    let mut code = CodeSection::new();
    code.function(&start);
    let mut m = Module::new();
    m.section(&types).section(&functions);
    if let Some(memories) = &memories {
        m.section(memories);
    }
    m.section(&exports).section(&code);
    m.finish()
}

/// A command of about `bytes` bytes of code that compiles slowly and runs in an instant:
/// `_start` returns at once; the other functions, never called, are each a long chain of
/// arithmetic over many locals that keeps the register allocator busy. Built from one
/// function body copied: generated in milliseconds whatever the size.
pub fn slow_to_compile(bytes: usize) -> Vec<u8> {
    const LOCALS: u32 = 24;
    const STEPS: u32 = 2000;
    let mut types = TypeSection::new();
    types.ty().function([], []);
    types.ty().function([ValType::I32], [ValType::I32]);
    let mut body = Function::new([(LOCALS, ValType::I32)]);
    for i in 0..LOCALS {
        body.instruction(&I::LocalGet(0))
            .instruction(&I::I32Const(i as i32 * 7 + 1))
            .instruction(&I::I32Mul)
            .instruction(&I::LocalSet(1 + i));
    }
    for s in 0..STEPS {
        let (a, b, c) = (
            1 + s % LOCALS,
            1 + (s * 7 + 3) % LOCALS,
            1 + (s * 13 + 5) % LOCALS,
        );
        body.instruction(&I::LocalGet(a))
            .instruction(&I::LocalGet(b))
            .instruction(&I::I32Mul)
            .instruction(&I::LocalGet(c))
            .instruction(&I::I32Xor)
            .instruction(&I::I32Const((s as i32).wrapping_mul(2_654_435)))
            .instruction(&I::I32Add)
            .instruction(&I::LocalSet(a));
    }
    body.instruction(&I::LocalGet(1));
    for i in 2..=LOCALS {
        body.instruction(&I::LocalGet(i)).instruction(&I::I32Add);
    }
    body.instruction(&I::End);
    let one = body.byte_len().max(1);
    let count = (bytes / one).max(1) as u32;

    let mut functions = FunctionSection::new();
    functions.function(0);
    for _ in 0..count {
        functions.function(1);
    }
    let mut exports = ExportSection::new();
    exports.export("_start", ExportKind::Func, 0);
    let mut start = Function::new([]);
    start.instruction(&I::End);
    let mut code = CodeSection::new();
    code.function(&start);
    for _ in 0..count {
        code.function(&body);
    }
    let mut m = Module::new();
    m.section(&types)
        .section(&functions)
        .section(&exports)
        .section(&code);
    m.finish()
}
