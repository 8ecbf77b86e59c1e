"""The Lua coroutine examples of the seed documents, ported to cosched.coro.

Each test ports one example and checks that it prints what the Lua original
prints. Lua's ``print`` separates values with tabs, hence ``lua_print``; Lua's
``true``/``false``/``nil`` print here as ``True``/``False``/``None``.
"""

import io
import sys

import trio

from cosched import coro

TIMEOUT = 10


def run(afn, *args):
    """Run ``afn(*args)`` as the main task of a fresh trio loop, bounded in time."""

    async def bounded():
        with trio.fail_after(TIMEOUT):
            return await afn(*args)

    return trio.run(bounded)


def lua_print(*values):
    print(*values, sep="\t")


def io_write(*values):
    sys.stdout.write("".join(str(v) for v in values))


def values(packed):
    """The values a packed yield_/transfer result stands for, as a tuple."""
    if packed is None:
        return ()
    return packed if type(packed) is tuple else (packed,)


# ---------------------------------------------------------------------------
# Seed 002


def test_seed002_create_resume_newcor1_newcor2(capsys):
    async def main():
        lua_print("coroutine start!")

        async def cor1():
            return 1, "a"

        new_cor1 = coro.create(cor1)
        ret1, num1, str1 = await coro.resume(new_cor1)
        lua_print("1-----", ret1, num1, str1)

        async def cor2(x):
            x = x + 10
            s, y = await coro.yield_(x)
            return s, y + x

        new_cor2 = coro.create(cor2)
        ret2, x = await coro.resume(new_cor2, 50)
        lua_print("2-----", x)
        ret3, str2, y = await coro.resume(new_cor2, "sss", 100)
        lua_print("2-----", str2, y)
        assert ret2 is True and ret3 is True

    run(main)
    assert capsys.readouterr().out == (
        "coroutine start!\n"
        "1-----\tTrue\t1\ta\n"
        "2-----\t60\n"
        "2-----\tsss\t160\n"
    )


def test_seed002_wrap_newcor3(capsys):
    async def main():
        async def cor3(x):
            x = x - 10
            y = await coro.yield_(x)
            return y

        new_cor3 = coro.wrap(cor3)
        ret4 = await new_cor3(100)
        lua_print("3-----", ret4)
        ret5 = await new_cor3(10)
        lua_print("3-----", ret5)

    run(main)
    assert capsys.readouterr().out == "3-----\t90\n3-----\t10\n"


def test_seed002_status_dead_and_cannot_resume_dead_coroutine(capsys):
    # The seed's printed output leaves out the two lines after the first
    # separator; its code comments (and Lua) print "dead" and the error there.
    async def main():
        async def body(i):
            lua_print(i)

        co = coro.create(body)
        lua_print(coro.status(co))  # suspended
        await coro.resume(co, 1)  # 1
        lua_print(coro.status(co))  # dead
        await coro.resume(co, 1)  # prints nothing
        lua_print("----------")
        lua_print(coro.status(co))  # dead
        lua_print(*await coro.resume(co))  # False cannot resume dead coroutine

        co = coro.wrap(body)
        await co(1)
        lua_print("----------")

    run(main)
    assert capsys.readouterr().out == (
        "suspended\n"
        "1\n"
        "dead\n"
        "----------\n"
        "dead\n"
        "False\tcannot resume dead coroutine\n"
        "1\n"
        "----------\n"
    )


def test_seed002_co2_loop_with_running(capsys):
    shown = []  # how the running coroutine printed (Lua: "thread: 0x...")

    async def main():
        async def body():
            for i in range(1, 11):
                lua_print(i)
                if i == 3:
                    lua_print(coro.status(co2))  # running
                    lua_print(*coro.running())  # the coroutine, False
                    assert coro.running()[0] is co2
                    shown.append(repr(co2))
                await coro.yield_()  # suspended here: one loop step per resume

        co2 = coro.create(body)
        await coro.resume(co2)  # 1
        await coro.resume(co2)  # 2
        await coro.resume(co2)  # 3
        lua_print(coro.status(co2))  # suspended
        lua_print(*coro.running())  # main, True
        lua_print("----------")

    run(main)
    assert len(shown) == 1 and "coroutine" in shown[0]
    assert capsys.readouterr().out == (
        "1\n"
        "2\n"
        "3\n"
        "running\n"
        f"{shown[0]}\tFalse\n"
        "suspended\n"
        f"{coro.main!r}\tTrue\n"
        "----------\n"
    )


def test_seed002_foo(capsys):
    date = "Tue Nov  5 13:23:41 2019"  # stands for os.date()

    async def main():
        async def foo(a):
            lua_print("foo 函数输出", a)
            lua_print("执行次数", 1, date)
            return await coro.yield_(2 * a)

        async def body(a, b):
            lua_print("第一次协同程序执行输出", a, b)
            r = await foo(a + 1)
            lua_print("第二次协同程序执行输出", r)
            r, s = await coro.yield_(a + b, a - b)
            lua_print("第三次协同程序执行输出", r, s)
            return b, "结束协同程序"

        co = coro.create(body)
        lua_print("main", *await coro.resume(co, 1, 10))
        lua_print("--分割线----")
        lua_print("main", *await coro.resume(co, "r"))
        lua_print("---分割线---")
        lua_print("main", *await coro.resume(co, "x", "y"))
        lua_print("---分割线---")
        lua_print("main", *await coro.resume(co, "x", "y"))
        lua_print("---分割线---")

    run(main)
    assert capsys.readouterr().out == (
        "第一次协同程序执行输出\t1\t10\n"
        "foo 函数输出\t2\n"
        "执行次数\t1\tTue Nov  5 13:23:41 2019\n"
        "main\tTrue\t4\n"
        "--分割线----\n"
        "第二次协同程序执行输出\tr\n"
        "main\tTrue\t11\t-9\n"
        "---分割线---\n"
        "第三次协同程序执行输出\tx\ty\n"
        "main\tTrue\t10\t结束协同程序\n"
        "---分割线---\n"
        "main\tFalse\tcannot resume dead coroutine\n"
        "---分割线---\n"
    )


def test_seed002_multiple_values_resume_args_become_body_args(capsys):
    async def main():
        async def body(a, b, c):
            lua_print(a, b, c)

        co = coro.create(body)
        await coro.resume(co, 1, 2, 3)

    run(main)
    assert capsys.readouterr().out == "1\t2\t3\n"


def test_seed002_multiple_values_yield_values_are_returned_by_resume(capsys):
    async def main():
        async def body(a, b):
            await coro.yield_(a + b, a - b)

        co = coro.create(body)
        a, b, c = await coro.resume(co, 10, 20)
        lua_print(a, b, c)

    run(main)
    assert capsys.readouterr().out == "True\t30\t-10\n"


def test_seed002_multiple_values_resume_args_are_returned_by_yield(capsys):
    async def main():
        async def body():
            lua_print("co", *values(await coro.yield_()))

        co = coro.create(body)
        lua_print(coro.status(co))
        await coro.resume(co)
        lua_print(coro.status(co))
        lua_print(*await coro.resume(co, 4, 5))

    run(main)
    assert capsys.readouterr().out == "suspended\nsuspended\nco\t4\t5\nTrue\n"


def test_seed002_coroutine_func_co2_co3(capsys):
    async def main():
        async def coroutine_func(a, b):
            for i in range(1, 11):
                lua_print(i, a, b)
                await coro.yield_()

        co2 = coro.create(coroutine_func)
        await coro.resume(co2, 100, 200)  # 1 100 200
        await coro.resume(co2)  # 2 100 200
        await coro.resume(co2, 500, 600)  # 3 100 200: these arguments go to yield_

        co3 = coro.create(coroutine_func)
        await coro.resume(co3, 300, 400)  # 1 300 400
        await coro.resume(co3)  # 2 300 400
        await coro.resume(co3)  # 3 300 400

    run(main)
    assert capsys.readouterr().out == (
        "1\t100\t200\n"
        "2\t100\t200\n"
        "3\t100\t200\n"
        "1\t300\t400\n"
        "2\t300\t400\n"
        "3\t300\t400\n"
    )


def test_seed002_print_co_a_b_and_yield(capsys):
    async def main():
        async def body(a, b):
            lua_print("co", a, b, *values(await coro.yield_()))

        co = coro.create(body)
        await coro.resume(co, 1, 2)  # no output: 1 and 2 are the body's arguments
        lua_print("after first resume")
        await coro.resume(co, 3, 4, 5)  # co 1 2 3 4 5

    run(main)
    assert capsys.readouterr().out == "after first resume\nco\t1\t2\t3\t4\t5\n"


def test_seed002_key_equals_a(capsys):
    async def main():
        async def coroutine_func(a, b):
            lua_print("co", a)
            await coro.yield_(b)

        co2 = coro.create(coroutine_func)
        lua_print(*await coro.resume(co2, 100, 200))

    run(main)
    assert capsys.readouterr().out == "co\t100\nTrue\t200\n"


def test_seed002_return_values_go_to_resume(capsys):
    async def main():
        async def body():
            return 6, 7

        co = coro.create(body)
        lua_print(*await coro.resume(co))

    run(main)
    assert capsys.readouterr().out == "True\t6\t7\n"


def print_result(a):
    for x in a:
        io_write(x, " ")
    io_write("\n")


def test_seed002_permutations_plain_recursion(capsys):
    def permgen(a, n=None):
        n = len(a) if n is None else n
        if n <= 1:
            print_result(a)
        else:
            for i in range(n):
                a[n - 1], a[i] = a[i], a[n - 1]
                permgen(a, n - 1)
                a[n - 1], a[i] = a[i], a[n - 1]

    permgen([1, 2, 3])
    assert capsys.readouterr().out == "2 3 1 \n3 2 1 \n3 1 2 \n1 3 2 \n2 1 3 \n1 2 3 \n"
    permgen(["a", "b", "c"])
    assert capsys.readouterr().out == "b c a \nc b a \nc a b \na c b \nb a c \na b c \n"


async def permgen_yield(a, n=None):
    n = len(a) if n is None else n
    if n <= 1:
        await coro.yield_(a)
    else:
        for i in range(n):
            a[n - 1], a[i] = a[i], a[n - 1]
            await permgen_yield(a, n - 1)
            a[n - 1], a[i] = a[i], a[n - 1]


def test_seed002_permutations_with_create_and_resume(capsys):
    async def main():
        def permutations(a):
            co = coro.create(lambda: permgen_yield(a))

            async def next_permutation():
                code, *res = await coro.resume(co)
                return res[0] if res else None

            return next_permutation

        next_permutation = permutations(["a", "b", "c"])
        while (p := await next_permutation()) is not None:
            print_result(p)

    run(main)
    assert capsys.readouterr().out == "b c a \nc b a \nc a b \na c b \nb a c \na b c \n"


def test_seed002_permutations_with_wrap(capsys):
    async def main():
        def permutations(a):
            return coro.wrap(lambda: permgen_yield(a))

        p_next = permutations(["a", "b", "c"])
        while (p := await p_next()) is not None:  # like Lua's `for p in permutations(...)`
            print_result(p)

    run(main)
    assert capsys.readouterr().out == "b c a \nc b a \nc a b \na c b \nb a c \na b c \n"


async def send(x):
    await coro.yield_(x)


def test_seed002_producer_consumer(capsys):
    stdin = io.StringIO("first line\nsecond line\n")

    async def main():
        async def receive(prod):
            status, value = await coro.resume(prod)
            return value

        def producer():
            async def body():
                while True:
                    x = stdin.readline().rstrip("\n") or None  # io.read(): nil at the end
                    lua_print("我进来了吗?1")
                    await send(x)
                    lua_print("我进来了吗?2")

            return coro.create(body)

        async def consumer(prod):
            while True:
                x = await receive(prod)
                if x is None:  # the Lua original fails in io.write(nil) here
                    break
                io_write(x, "\n")

        await consumer(producer())

    run(main)
    assert capsys.readouterr().out == (
        "我进来了吗?1\n"
        "first line\n"
        "我进来了吗?2\n"
        "我进来了吗?1\n"
        "second line\n"
        "我进来了吗?2\n"
        "我进来了吗?1\n"
    )


def test_seed002_producer_split_status_and_first_resume(capsys):
    stdin = io.StringIO("only line\n")

    async def main():
        async def body():
            while True:
                x = stdin.readline().rstrip("\n") or None
                await send(x)

        co = coro.create(body)
        lua_print(coro.status(co))
        lua_print(*await coro.resume(co))

    run(main)
    assert capsys.readouterr().out == "suspended\nTrue\tonly line\n"


def test_seed002_producer_filter_consumer_pipeline(capsys, tmp_path):
    path = tmp_path / "input.txt"
    path.write_text("alpha\nbeta\n")

    async def main():
        async def receive(prod):
            status, value = await coro.resume(prod)
            lua_print("echo 1")
            lua_print("value is", value)
            return value

        def producer(stdin):
            async def body():
                lua_print("echo 3")
                while True:
                    x = stdin.readline().rstrip("\n") or None
                    await send(x)

            return coro.create(body)

        def filter_(prod):
            async def body():
                line = 1
                while True:
                    lua_print("echo ")
                    x = await receive(prod)
                    if x is not None:  # end of input goes on through the pipe
                        x = "%5d %s" % (line, x)
                    await send(x)
                    line += 1

            return coro.create(body)

        async def consumer(prod):
            while True:
                lua_print("why ?")
                x = await receive(prod)
                if x:
                    lua_print("echo 2")
                    io_write(x, "\n")
                else:
                    break

        with open(path) as stdin:
            p = producer(stdin)
            f = filter_(p)
            await consumer(f)

    run(main)
    assert capsys.readouterr().out == (
        "why ?\n"
        "echo \n"
        "echo 3\n"
        "echo 1\n"
        "value is\talpha\n"
        "echo 1\n"
        "value is\t    1 alpha\n"
        "echo 2\n"
        "    1 alpha\n"
        "why ?\n"
        "echo \n"
        "echo 1\n"
        "value is\tbeta\n"
        "echo 1\n"
        "value is\t    2 beta\n"
        "echo 2\n"
        "    2 beta\n"
        "why ?\n"
        "echo \n"
        "echo 1\n"
        "value is\tNone\n"
        "echo 1\n"
        "value is\tNone\n"
    )


def test_seed002_producer_filter_consumer_formatting(capsys):
    stdin = io.StringIO("x\n" * 11 + "last line\n")

    async def main():
        async def receive(prod):
            status, *value = await coro.resume(prod)
            assert status is True
            return value[0] if value else None  # the filter's end: no value

        def producer():
            async def body():
                while True:
                    await send(stdin.readline().rstrip("\n") or None)

            return coro.create(body)

        def filter_(prod):
            async def body():
                line = 1
                while (x := await receive(prod)) is not None:
                    await send("%5d %s" % (line, x))
                    line += 1

            return coro.create(body)

        async def consumer(prod):
            while (x := await receive(prod)) is not None:
                io_write(x, "\n")

        await consumer(filter_(producer()))

    run(main)
    expected = "".join("%5d x\n" % i for i in range(1, 12)) + "   12 last line\n"
    assert capsys.readouterr().out == expected
    assert expected.startswith("    1 x\n") and expected.endswith("   12 last line\n")


# ---------------------------------------------------------------------------
# Seed 001 (Programming in Lua, chapter 24)


def test_seed001_coroutine_basics(capsys):
    async def main():
        co = coro.create(lambda: print("hi"))
        lua_print(coro.status(co))
        await coro.resume(co)
        lua_print(coro.status(co))

        async def body(a, b, c):
            lua_print("co", a, b, c + 2)

        co = coro.create(body)
        await coro.resume(co, 1, 2, 3)

        async def body2(a, b):
            await coro.yield_(a + b, a - b)

        co = coro.create(body2)
        lua_print(*await coro.resume(co, 20, 10))

    run(main)
    assert capsys.readouterr().out == "suspended\nhi\ndead\nco\t1\t2\t5\nTrue\t30\t10\n"


def test_seed001_producer_consumer_who_is_the_boss(capsys):
    lines = io.StringIO("one\ntwo\nthree\n")

    async def main():
        async def producer():
            while (x := lines.readline()) != "":
                await coro.yield_(x.rstrip("\n"))  # send

        async def consumer(prod):
            async for x in prod:  # receive: resumes the producer
                io_write(x, "\n")

        await consumer(coro.wrap(producer))

    run(main)
    assert capsys.readouterr().out == "one\ntwo\nthree\n"


def test_seed001_producer_filter_consumer_as_iterators(capsys):
    lines = io.StringIO("one\ntwo\nthree\n")

    async def main():
        def producer():
            async def body():
                while (x := lines.readline()) != "":
                    await coro.yield_(x.rstrip("\n"))

            return coro.wrap(body)

        def filter_(prod):
            async def body():
                line = 1
                async for x in prod:
                    await coro.yield_("%5d %s" % (line, x))
                    line += 1

            return coro.wrap(body)

        async for x in filter_(producer()):
            io_write(x, "\n")

    run(main)
    assert capsys.readouterr().out == "    1 one\n    2 two\n    3 three\n"


def test_seed001_permutations_as_iterator_with_async_for(capsys):
    async def main():
        def permutations(a):
            return coro.wrap(lambda: permgen_yield(a))

        count = 0
        async for p in permutations(["a", "b", "c"]):
            print_result(p)
            count += 1
        return count

    assert run(main) == 6
    assert capsys.readouterr().out == "b c a \nc b a \nc a b \na c b \nb a c \na b c \n"
