"""When may an operator's result stay unbuilt? A look-ahead over the caller's bytecode.

``0.5 * net + 0.5 * other`` runs three operators. Eagerly, each one builds a
whole module (a tree of ``nn.Module`` objects and ``nn.Parameter`` wrappers)
and runs its own pass over the tensors, although the first two results are
dropped a moment later. The module operators (``module.py``) ask
:func:`result_is_consumed` whether their result can only ever reach another of
our operators in the same expression; if so they hand back a private pending
value (a core ``nytorch_fn.Particle``, possibly with a pending scalar factor)
instead of a module, and the operator whose result leaves the expression
builds the one module, with ``a * p + b * q`` fused into one pass per tensor
by the core.

The answer is proved, never guessed. The caller's frame must be executing a
binary-operator instruction whose operands, read from the names it loaded,
are our own (a Python ``int``/``float``, a module of the exact class, or a
pending value); the instructions after it, up to the one that consumes the
result, must be name/constant loads and binary operators whose operands are
again our own or numbers: no call, no attribute access, no jump, no store,
no foreign operand. Python then runs no code but ours between the result's
birth and its consumption, so nothing can see it, and the values it is made
of cannot change before it is computed. Anything else, an unknown opcode,
an unsupported Python version, a tracer (``sys.settrace``: it could run code
between two instructions) or ``NYTORCH_FUSE=0`` in the environment, gives the
eager, legacy behaviour.

Reading a function's local variables (to know what a ``LOAD_FAST`` will
push) goes through ``frame.f_locals``, which on 3.11 builds a dict that the
frame keeps, with references to the locals' values: we empty it again
(every reader rebuilds it before use), and we do not read the locals of a
function that can get hold of that dict itself (its code names ``locals``,
``vars``, ``f_locals``, ``_getframe``...): there no operator's result stays
unbuilt.

What remains observable: the result is computed when the expression's value
is built, so another thread or a signal handler that changes ``net``'s
parameters *while* the expression runs can change it (the eager path has the
same race one operator earlier). Sums and differences round as the eager
path rounds (see ``_bridge.combine``).
"""

from __future__ import annotations

import dis
import os
import sys
from typing import Any, Callable, Optional

# Versions whose bytecode this was written and tested against. Elsewhere: eager.
_TESTED = {(3, 11)}
ENABLED = sys.version_info[:2] in _TESTED and os.environ.get("NYTORCH_FUSE", "1") != "0"

_SYMBOLS = {"+", "-", "*", "/", "**"}
_INPLACE = {"+=", "-=", "*=", "/=", "**="}  # these only ever consume a result: they return their left operand
_NOPS = {"NOP", "EXTENDED_ARG", "CACHE"}

# Abstract values of the simulation.
NUMBER, OURS, FOREIGN, RESULT = 0, 1, 2, 3
_MISSING = object()
_CO_OPTIMIZED = 0x0001  # a function's frame: fast locals, f_locals is a snapshot
# Names through which a function can get hold of its own locals dict (``locals()``,
# ``sys._getframe().f_locals``...): there a peek would change a dict the code may keep.
_SEES_ITS_LOCALS = frozenset(
    {"locals", "vars", "dir", "eval", "exec", "f_locals", "_getframe", "currentframe", "stack", "breakpoint"}
)

# Steps of a region program: (op, payload)
_CONST, _LOCAL, _GLOBAL, _NAME, _BINOP = range(5)

# id(code) -> (code, {offset: program}). Keyed by id: a code object's hash is recomputed on
# every call (over its constants); holding the code keeps its id from being reused.
_programs: dict[int, tuple] = {}


def _program(code: Any, offset: int) -> Any:
    entry = _programs.get(id(code))
    if entry is None or entry[0] is not code:
        if len(_programs) > 4096:  # a program generating code objects endlessly
            _programs.clear()
        entry = _programs[id(code)] = (code, {})
    found = entry[1].get(offset, _MISSING)
    if found is _MISSING:
        found = entry[1][offset] = _compile(code, offset)
    return found


def _step(ins: dis.Instruction) -> Any:
    """The region step for one instruction, "nop", or None (it ends a region)."""
    name = ins.opname
    if name == "BINARY_OP":
        return (_BINOP, ins.argrepr) if ins.argrepr in _SYMBOLS or ins.argrepr in _INPLACE else None
    if name == "LOAD_CONST":
        value = ins.argval
        return (_CONST, NUMBER if type(value) in (int, float) else FOREIGN)
    if name in ("LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_DEREF"):
        return (_LOCAL, ins.argval)
    if name == "LOAD_GLOBAL":
        return None if (ins.arg or 0) & 1 else (_GLOBAL, ins.argval)  # odd: pushes NULL, a call follows
    if name == "LOAD_NAME":
        return (_NAME, ins.argval)
    if name in _NOPS:
        return "nop"
    return None


def _compile(code: Any, offset: int) -> Any:
    """The straight-line run of loads and operators around the operator at ``offset``.

    None when the instruction there is not a supported binary operator. The
    run ends before the first instruction that is anything else or a jump
    target (the stack there may come from elsewhere), and starts after the
    last such one. Returns ``(steps, at, symbol, decisions)``: ``decisions``
    caches the answer for each tuple of kinds of the loaded values (None when
    no operator follows: the answer is always no).
    """
    instrs = list(dis.get_instructions(code))
    at = next((i for i, ins in enumerate(instrs) if ins.offset == offset), None)
    step = None if at is None else _step(instrs[at])
    if step is None or step == "nop" or step[0] != _BINOP:
        return None
    start = at
    while start > 0 and not instrs[start].is_jump_target and _step(instrs[start - 1]) is not None:
        start -= 1
    steps, pos = [], -1
    for i in range(start, len(instrs)):
        ins = instrs[i]
        if i > start and ins.is_jump_target:
            break
        step = _step(ins)
        if step is None:
            break
        if step == "nop":
            continue
        if i == at:
            pos = len(steps)
        steps.append(step)
    followed = any(op == _BINOP for op, _ in steps[pos + 1 :])
    if any(op == _LOCAL for op, _ in steps) and code.co_flags & _CO_OPTIMIZED and _SEES_ITS_LOCALS & set(code.co_names):
        followed = False  # reading its locals would refresh (and then empty) a dict this code may hold
    return tuple(steps), pos, steps[pos][1], ({} if followed else None)


def result_is_consumed(frame: Any, symbol: str, cls: type, pending: type) -> bool:
    """True when the result of the binary operator ``frame`` is executing can only reach our operators.

    ``symbol`` is the operator being computed (``"+"``...). Ours are: a module
    of exactly ``cls`` and a ``pending`` value of ``cls``; numbers are Python
    ints and floats.
    """
    if not ENABLED or frame is None or sys.gettrace() is not None or frame.f_trace is not None:
        return False
    program = _program(frame.f_code, frame.f_lasti)
    if program is None:
        return False  # not called by a binary-operator instruction (an explicit call, C code...)
    steps, at, op_symbol, decisions = program
    if decisions is None or op_symbol != symbol:
        return False
    local_vars: list = []
    kinds: Any = []
    try:
        for op, arg in steps:  # the kind of every value the run's loads push, in order
            if op == _BINOP:
                continue
            if op == _CONST:
                kinds.append(arg)
                continue
            value = _peek(frame, op, arg, local_vars)
            kind = type(value)
            if kind is int or kind is float:
                kinds.append(NUMBER)
            elif kind is cls or (kind is pending and value.cls is cls):
                kinds.append(OURS)
            else:
                kinds.append(FOREIGN)
    finally:
        if local_vars and type(local_vars[0]) is dict and frame.f_code.co_flags & _CO_OPTIMIZED:
            # 3.11 keeps the snapshot that ``f_locals`` built in the frame until the
            # frame refreshes it: it would keep the locals' old values alive.
            # Every reader (``locals()``, a debugger) rebuilds it before use.
            local_vars[0].clear()
    kinds = tuple(kinds)
    found = decisions.get(kinds)
    if found is None:
        found = decisions[kinds] = _simulate(steps, at, kinds)
    return found


def _simulate(steps: tuple, at: int, kinds: tuple) -> bool:
    """Run the stack discipline of ``steps`` on abstract values; see the module docstring."""
    loaded = iter(kinds)
    stack: list[int] = []
    for i, (op, _) in enumerate(steps):
        if op != _BINOP:
            stack.append(next(loaded))
            continue
        b = stack.pop() if stack else FOREIGN
        a = stack.pop() if stack else FOREIGN
        if i == at:
            if a == FOREIGN or b == FOREIGN or (a == NUMBER and b == NUMBER):
                return False  # not the operator our caller thinks it is
            stack.append(RESULT)
        elif a == RESULT or b == RESULT:
            return (b if a == RESULT else a) != FOREIGN  # consumed by our operator: nothing foreign ran since
        elif a == FOREIGN or b == FOREIGN:
            if i > at:
                return False  # foreign code would run while the result is alive
            # before us: a name loaded earlier may have been rebound by that code
            stack = [FOREIGN] * (len(stack) + 1)
        else:
            stack.append(NUMBER if a == NUMBER and b == NUMBER else OURS)
    return False  # the run ends (a store, a return, a call...) before an operator takes the result


def _peek(frame: Any, op: int, name: str, local_vars: list) -> Any:
    """The value a load of ``name`` pushes (or pushed), without running any code."""
    if op == _LOCAL:
        if not local_vars:
            local_vars.append(frame.f_locals)  # one snapshot per analysis (3.11 builds it on access)
        scope = local_vars[0]
        return scope.get(name, _MISSING) if type(scope) is dict else _MISSING
    if op == _NAME:
        scope = frame.f_locals
        if type(scope) is not dict:  # a custom mapping (a class body's namespace) could run code
            return _MISSING
        value = scope.get(name, _MISSING)
        if value is not _MISSING:
            return value
    scope = frame.f_globals
    if type(scope) is not dict:
        return _MISSING
    value = scope.get(name, _MISSING)
    if value is _MISSING:
        builtins = frame.f_builtins
        value = builtins.get(name, _MISSING) if type(builtins) is dict else _MISSING
    return value


def caller(skip: frozenset) -> Optional[Any]:
    """The first frame up the stack whose code is not one of ``skip`` (ids of our operators' code)."""
    frame = sys._getframe(1)
    while frame is not None and id(frame.f_code) in skip:
        frame = frame.f_back
    return frame
